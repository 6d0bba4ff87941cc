"""systemd's notify protocol, spoken by a real worker process to a real socket."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from async_consumer.systemd import Notifier
from daemon_support import NotifySocket, scripted_ini, start_worker, stop_worker

REPO = Path(__file__).resolve().parent.parent
UNIT = REPO / "deploy" / "async-consumer.service"
WATCHDOG_SECONDS = 2.0


def gaps(times: list[float]) -> list[float]:
    return [later - earlier for earlier, later in zip(times, times[1:])]


def test_notifier_is_silent_without_a_socket() -> None:
    notifier = Notifier({})

    assert not notifier.enabled
    assert notifier.ready() is False
    assert notifier.watchdog_interval is None


def test_watchdog_is_only_for_the_process_systemd_named() -> None:
    mine = Notifier({"WATCHDOG_USEC": "3000000", "WATCHDOG_PID": str(os.getpid())})
    other = Notifier({"WATCHDOG_USEC": "3000000", "WATCHDOG_PID": "1"})

    assert mine.watchdog_interval == 1.5
    assert other.watchdog_interval is None


def test_abstract_socket_receives_a_notification(tmp_path: Path) -> None:
    listener = NotifySocket(abstract=f"async-consumer-test-{os.getpid()}")
    try:
        assert Notifier({"NOTIFY_SOCKET": listener.name}).ready("up") is True
        listener.receive(1)
    finally:
        listener.close()

    assert listener.messages[0][1].splitlines() == ["READY=1", "STATUS=up"]


@pytest.mark.slow
def test_worker_reports_ready_pings_the_watchdog_and_says_it_stops(tmp_path: Path) -> None:
    listener = NotifySocket(tmp_path / "notify.sock")
    worker = start_worker(scripted_ini(tmp_path), env={
        "NOTIFY_SOCKET": listener.name, "WATCHDOG_USEC": str(int(WATCHDOG_SECONDS * 1e6)),
    })
    try:
        ready_at = listener.wait_for("READY=1", 30)
        listener.receive(4 * WATCHDOG_SECONDS)
        worker.send_signal(15)
        stopping_at = listener.wait_for("STOPPING=1", 10)
        # One SIGTERM, as systemd sends: a second one would mean "cancel now".
        assert worker.wait(timeout=20) == 0
    finally:
        if worker.poll() is None:
            stop_worker(worker)
        listener.close()

    pings = [at for at in listener.times_of("WATCHDOG=1") if ready_at <= at < stopping_at]
    assert len(pings) >= 5
    assert max(gaps(pings)) < WATCHDOG_SECONDS
    assert min(gaps(pings)) > WATCHDOG_SECONDS / 4
    statuses = [m for _, m in listener.messages if m.startswith("STATUS=")]
    assert any(re.search(r"\d+ done \(\d+ ok", status) for status in statuses)


@pytest.mark.slow
def test_a_blocked_hub_stops_the_pings(tmp_path: Path) -> None:
    listener = NotifySocket(tmp_path / "notify.sock")
    ini = scripted_ini(tmp_path, provider="block_after = 2\nblock_seconds = 4\n")
    worker = start_worker(ini, env={
        "NOTIFY_SOCKET": listener.name, "WATCHDOG_USEC": str(int(WATCHDOG_SECONDS * 1e6)),
    })
    try:
        listener.wait_for("READY=1", 30)
        listener.receive(9)
    finally:
        assert stop_worker(worker) == 0
        listener.close()

    pings = listener.times_of("WATCHDOG=1")
    longest = max(gaps(pings))
    assert longest > 3.5, "a 4 s block must leave a 4 s hole in the pings"
    assert pings[-1] - pings[0] > longest, "the pings come back once the hub is free"


def test_unit_file_passes_systemd_analyze(tmp_path: Path) -> None:
    if shutil.which("systemd-analyze") is None:
        pytest.skip("systemd-analyze is not installed")
    unit = tmp_path / UNIT.name
    # verify checks that ExecStart= exists: point it at this checkout's entry point.
    binary = shutil.which("async-consumer") or str(REPO / ".venv" / "bin" / "async-consumer")
    unit.write_text(UNIT.read_text().replace("/opt/async-consumer/venv/bin/async-consumer",
                                             binary))
    result = subprocess.run(["systemd-analyze", "verify", str(unit)], capture_output=True,
                            text=True, timeout=60)

    problems = [line for line in result.stderr.splitlines() if UNIT.name in line]
    assert result.returncode == 0 and not problems, result.stderr


def test_unit_file_asks_for_notify_watchdog_and_hardening() -> None:
    settings: dict[str, str] = {}
    lines = UNIT.read_text().splitlines()
    for number, line in enumerate(lines):
        if "=" in line and not line.startswith("#"):
            key, _, value = line.partition("=")
            settings[key] = value
            assert lines[number - 1].startswith("#"), f"{key}= has no comment above it"

    assert settings["Type"] == "notify"
    assert settings["NotifyAccess"] == "main"
    assert settings["KillSignal"] == "SIGTERM"
    assert int(settings["TimeoutStopSec"]) > 30
    assert settings["Restart"] == "on-failure"
    assert settings["WatchdogSec"]
    for key in ("NoNewPrivileges", "ProtectHome", "PrivateTmp"):
        assert settings[key] == "yes"
    assert settings["ProtectSystem"] == "strict"
    assert settings["StateDirectory"] == "async-consumer"
