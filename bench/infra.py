"""What every scenario stands on: servers, child processes, brokers and CPU clocks.

The suite starts its own nginx and delay server on loopback ports it picks, with
every file they write (config, pid, logs, temp bodies) in one temporary directory,
and stops them by PID. Brokers are the local Redis and RabbitMQ; every run uses
names derived from a fresh run id and deletes them afterwards.
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
REDIS_URL = "redis://127.0.0.1:6379/0"
AMQP_URL = "amqp://guest:guest@127.0.0.1:5672/%2F"
#: nginx answers every path with exactly this many bytes.
NGINX_BODY_BYTES = 100
START_SECONDS = 15.0
STOP_SECONDS = 15.0
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")

NGINX_CONF = """\
daemon off;
master_process on;
worker_processes {workers};
pid {tmp}/nginx.pid;
error_log {tmp}/nginx-error.log warn;
events {{
    worker_connections 8192;
}}
http {{
    access_log off;
    client_body_temp_path {tmp}/client-body;
    proxy_temp_path {tmp}/proxy;
    fastcgi_temp_path {tmp}/fastcgi;
    uwsgi_temp_path {tmp}/uwsgi;
    scgi_temp_path {tmp}/scgi;
    keepalive_timeout 120s;
    keepalive_requests 1000000;
    server {{
        listen 127.0.0.1:{port} backlog=4096;
        default_type text/plain;
        location / {{
            return 200 "{body}";
        }}
    }}
}}
"""


class BenchError(RuntimeError):
    """A scenario could not run or a variant failed; the message says which."""


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def wait_listening(port: int, process: subprocess.Popen, what: str) -> None:
    """Return once ``port`` accepts connections; raise if ``process`` died first."""
    deadline = time.monotonic() + START_SECONDS
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise BenchError(f"{what} exited with status {process.returncode} while starting")
        try:
            socket.create_connection(("127.0.0.1", port), 0.5).close()
            return
        except OSError:
            time.sleep(0.05)
    raise BenchError(f"{what} did not listen on 127.0.0.1:{port} within {START_SECONDS:.0f} s")


def stop_process(process: subprocess.Popen, sig: int = signal.SIGTERM) -> None:
    """Stop a process this suite started, by its PID: ``sig`` first, then SIGKILL."""
    if process.poll() is not None:
        return

    os.kill(process.pid, sig)
    try:
        process.wait(timeout=STOP_SECONDS)
    except subprocess.TimeoutExpired:
        os.kill(process.pid, signal.SIGKILL)
        process.wait(timeout=STOP_SECONDS)


def nginx_binary() -> str:
    """The nginx executable, installing Debian's nginx-light when there is none."""
    found = shutil.which("nginx") or ("/usr/sbin/nginx" if Path("/usr/sbin/nginx").exists()
                                      else None)
    if found:
        return found

    if os.geteuid() != 0 or not shutil.which("apt-get"):
        raise BenchError("nginx is missing: install the Debian package nginx-light")
    print("nginx is missing: installing nginx-light with apt-get", flush=True)
    environment = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    subprocess.run(["apt-get", "update", "-qq"], check=True, env=environment)
    subprocess.run(["apt-get", "install", "-y", "-qq", "nginx-light"], check=True,
                   env=environment)
    return shutil.which("nginx") or "/usr/sbin/nginx"


class Nginx:
    """A private nginx on a free loopback port, answering 100 bytes with keep-alive.

    One worker process: the machine has two cores and the client being measured
    needs one of them.
    """

    def __init__(self, directory: Path, workers: int = 1) -> None:
        self.directory = directory
        self.workers = workers
        self.process: subprocess.Popen | None = None
        self.port = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/bytes"

    def start(self) -> None:
        binary = nginx_binary()
        body = "x" * (NGINX_BODY_BYTES - 1) + "\\n"
        for _ in range(3):
            self.port = free_port()
            config = self.directory / "nginx.conf"
            config.write_text(NGINX_CONF.format(
                tmp=self.directory, port=self.port, workers=self.workers, body=body))
            log = open(self.directory / "nginx-stderr.log", "ab")
            self.process = subprocess.Popen(
                [binary, "-p", str(self.directory), "-c", str(config),
                 "-e", str(self.directory / "nginx-error.log")],
                stdout=log, stderr=log, stdin=subprocess.DEVNULL,
            )
            log.close()
            try:
                wait_listening(self.port, self.process, "nginx")
                return
            except BenchError:
                stop_process(self.process)
        raise BenchError(f"nginx did not start; see {self.directory / 'nginx-error.log'}")

    def stop(self) -> None:
        if self.process is not None:
            stop_process(self.process)

    def version(self) -> str:
        result = subprocess.run([nginx_binary(), "-v"], capture_output=True, text=True)
        return result.stderr.strip().split("/")[-1]


class DelayServer:
    """``bench.delayserver`` (gevent's WSGI server, no pool limit) on a loopback port.

    It answers ``/delay/<ms>`` after that many milliseconds and holds thousands of
    connections at once, which the skew and concurrency scenarios need.
    """

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.process: subprocess.Popen | None = None
        self.base_url = ""

    def start(self) -> None:
        port_file = self.directory / "delay-server.port"
        log = open(self.directory / "delay-server.log", "ab")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "bench.delayserver", "--port-file", str(port_file)],
            cwd=REPO, stdout=log, stderr=log, stdin=subprocess.DEVNULL, env=child_env())
        log.close()
        deadline = time.monotonic() + START_SECONDS
        while not port_file.exists():
            if self.process.poll() is not None or time.monotonic() > deadline:
                stop_process(self.process)
                raise BenchError(f"the delay server did not start: "
                                 f"{tail(self.directory / 'delay-server.log')}")
            time.sleep(0.02)
        port = int(port_file.read_text())
        wait_listening(port, self.process, "the delay server")
        self.base_url = f"http://127.0.0.1:{port}"

    def stop(self) -> None:
        if self.process is not None:
            stop_process(self.process)


# -- child programs --------------------------------------------------------------------


def run_child(module: str, args: Sequence[Any], log_dir: Path, timeout: float,
              env: dict[str, str] | None = None) -> dict[str, Any]:
    """Run ``python -m module args`` and return the JSON object on its last stdout line.

    Each variant is a fresh interpreter, so patching, imports and memory of one never
    reach another. Its stderr goes to a log file whose tail is quoted on failure.
    """
    command = [sys.executable, "-m", module, *map(str, args)]
    log_path = log_dir / f"{module.rsplit('.', 1)[-1]}-{time.monotonic_ns()}.log"
    with open(log_path, "wb") as log:
        try:
            result = subprocess.run(command, stdout=subprocess.PIPE, stderr=log, cwd=REPO,
                                    timeout=timeout, env=child_env(env))
        except subprocess.TimeoutExpired:
            raise BenchError(f"{' '.join(command[2:])} ran longer than {timeout:.0f} s")

    lines = result.stdout.decode(errors="replace").strip().splitlines()
    if result.returncode != 0 or not lines:
        raise BenchError(f"{' '.join(command[2:])} failed (status {result.returncode}): "
                         f"{tail(log_path)}")
    try:
        parsed: dict[str, Any] = json.loads(lines[-1])
    except json.JSONDecodeError:
        raise BenchError(f"{' '.join(command[2:])} printed no result: {lines[-1][:200]}")
    return parsed


def child_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """The environment of a child: this one, the repo importable, unbuffered output."""
    environment = dict(os.environ)
    environment["PYTHONPATH"] = os.pathsep.join(
        [str(REPO)] + [p for p in environment.get("PYTHONPATH", "").split(os.pathsep) if p])
    environment["PYTHONUNBUFFERED"] = "1"
    environment.update(extra or {})
    return environment


def tail(path: Path, lines: int = 8) -> str:
    """The last lines of a log, on one line, for an error message."""
    try:
        text = path.read_text(errors="replace").strip().splitlines()
    except OSError:
        return f"(no log at {path})"
    return " | ".join(text[-lines:]) or f"(empty log {path})"


# -- CPU clocks of processes -----------------------------------------------------------


def children_of(pid: int) -> list[int]:
    """Direct children of ``pid``, from /proc."""
    found = []
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return []
    for task in tasks:
        try:
            found += [int(c) for c in Path(f"/proc/{pid}/task/{task}/children").read_text()
                      .split()]
        except OSError:
            continue
    return found


def process_tree(pid: int) -> list[int]:
    """``pid`` and all its descendants."""
    tree, queue = [], [pid]
    while queue:
        current = queue.pop()
        tree.append(current)
        queue += children_of(current)
    return tree


def process_cpu_seconds(pid: int, with_reaped_children: bool = True) -> float:
    """User + system CPU seconds of one process (and the children it already reaped)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return 0.0
    fields = stat.rsplit(")", 1)[1].split()
    # fields[11..14] are utime, stime, cutime, cstime (fields 14-17 of proc(5)).
    ticks = int(fields[11]) + int(fields[12])
    if with_reaped_children:
        ticks += int(fields[13]) + int(fields[14])
    return ticks / CLOCK_TICKS


def tree_cpu_seconds(pid: int) -> float:
    """CPU seconds of a process and every live descendant."""
    return sum(process_cpu_seconds(p) for p in process_tree(pid))


def find_process(command_name: str) -> int | None:
    """The PID of a running process whose command name is ``command_name``.

    Used read-only, to report how much CPU a broker spent during a run.
    """
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            if Path(f"/proc/{entry}/comm").read_text().strip() == command_name:
                return int(entry)
        except OSError:
            continue
    return None


BROKER_PROCESS_NAMES = {"redis": "redis-server", "rabbitmq": "beam.smp"}


def broker_cpu_seconds(broker: str) -> float | None:
    """CPU seconds the broker process has used so far, or ``None`` if it is not visible."""
    pid = find_process(BROKER_PROCESS_NAMES.get(broker, ""))
    if pid is None:
        return None
    return process_cpu_seconds(pid, with_reaped_children=False)


# -- brokers ---------------------------------------------------------------------------


def redis_delete_prefix(prefix: str) -> int:
    """Delete every Redis key starting with ``prefix``; returns how many."""
    import redis

    client = redis.Redis.from_url(REDIS_URL)
    try:
        keys = list(client.scan_iter(match=f"{prefix}*", count=1000))
        if keys:
            client.delete(*keys)
        return len(keys)
    finally:
        client.close()


def rabbitmq_delete(queues: Iterable[str] = (), exchanges: Iterable[str] = ()) -> None:
    """Delete queues and exchanges (a missing one is no error in RabbitMQ)."""
    import pika

    connection = pika.BlockingConnection(pika.URLParameters(AMQP_URL))
    try:
        channel = connection.channel()
        for queue in queues:
            channel.queue_delete(queue=queue)
        for exchange in exchanges:
            channel.exchange_delete(exchange=exchange)
    finally:
        connection.close()


def service_up(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), 2).close()
        return True
    except OSError:
        return False


# -- the machine -----------------------------------------------------------------------


PACKAGES = ("async_consumer", "gevent", "greenlet", "requests", "urllib3", "geventhttpclient",
            "grequests", "aiohttp", "httpx", "dramatiq", "celery", "kombu", "redis", "pika",
            "matplotlib")


@dataclass
class Machine:
    """What the figures were measured on."""

    cpu_count: int
    cpu_model: str
    python: str
    platform: str
    packages: dict[str, str] = field(default_factory=dict)
    servers: dict[str, str] = field(default_factory=dict)


def describe_machine(nginx: Nginx | None) -> Machine:
    import importlib.metadata

    model = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass

    packages = {}
    for name in PACKAGES:
        try:
            packages[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            packages[name] = "not installed"

    servers = {"nginx": nginx.version() if nginx else "not started",
               "redis-server": _server_version(["redis-server", "--version"], "v="),
               "rabbitmq": _rabbitmq_version()}
    return Machine(os.cpu_count() or 0, model, platform.python_version(),
                   platform.platform(), packages, servers)


def _server_version(command: list[str], marker: str) -> str:
    try:
        out = subprocess.run(command, capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    for word in out.split():
        if word.startswith(marker):
            return word[len(marker):]
    return out.strip() or "unknown"


def _rabbitmq_version() -> str:
    try:
        import pika

        connection = pika.BlockingConnection(pika.URLParameters(AMQP_URL))
        properties = connection._impl.server_properties  # the broker's own greeting
        connection.close()
        version = properties.get("version", b"unknown")
        return version.decode() if isinstance(version, bytes) else str(version)
    except Exception:
        return "unknown"
