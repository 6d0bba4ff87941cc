"""The progress bar of ``run --until-empty``: on a terminal only."""

import json
import os
import pty
import select
import subprocess
import sys
import time

from conftest import write_ini

INI = """\
[consumer]
concurrency = 20
[provider]
path = queue.sqlite3
[results]
path = results.jsonl
"""


def enqueue_delayed_jobs(directory, target, count):
    jobs = "\n".join(json.dumps({"url": f"{target.url}/delay/100"}) for _ in range(count))
    subprocess.run([sys.executable, "-m", "async_consumer", "enqueue", "-c", "worker.ini", "-"],
                   cwd=directory, input=jobs, text=True, check=True, capture_output=True)


def run_with_stderr(directory, stderr_fd):
    return subprocess.run(
        [sys.executable, "-m", "async_consumer", "run", "-c", "worker.ini", "--until-empty"],
        cwd=directory, stdout=subprocess.PIPE, stderr=stderr_fd, timeout=60,
    )


def test_a_terminal_gets_a_progress_bar_that_ends_at_the_job_count(tmp_path, target):
    write_ini(tmp_path, INI)
    enqueue_delayed_jobs(tmp_path, target, 100)
    controller, terminal = pty.openpty()

    process = subprocess.Popen(
        [sys.executable, "-m", "async_consumer", "run", "-c", "worker.ini", "--until-empty"],
        cwd=tmp_path, stdout=subprocess.PIPE, stderr=terminal,
    )
    os.close(terminal)
    shown = read_until_closed(controller, seconds=60)
    process.wait(timeout=10)

    assert process.returncode == 0
    assert b"\r[" in shown
    assert b"] 100/100 jobs" in shown


def read_until_closed(fd, seconds):
    """Drain a pty while the child writes, so that it never blocks on a full buffer."""
    shown = b""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        ready, _, _ = select.select([fd], [], [], 0.2)
        if not ready:
            continue
        try:
            chunk = os.read(fd, 65536)
        except OSError:
            break
        if not chunk:
            break
        shown += chunk
    os.close(fd)
    return shown


def test_a_pipe_gets_no_progress_bar(tmp_path, target):
    write_ini(tmp_path, INI)
    enqueue_delayed_jobs(tmp_path, target, 30)

    result = run_with_stderr(tmp_path, subprocess.PIPE)

    assert result.returncode == 0
    assert b"\r[" not in result.stderr
    assert b"done: 30 job(s)" in result.stdout
