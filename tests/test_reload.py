"""SIGHUP makes a real worker re-read its INI file."""

from __future__ import annotations

import signal
from pathlib import Path

import pytest

from conftest import wait_until
from daemon_support import scripted_ini, start_worker, stop_worker


def logged(log: Path, text: str) -> bool:
    return text in log.read_text()


@pytest.mark.slow
def test_sighup_applies_live_settings_refuses_a_bad_file_and_names_restart_ones(
    tmp_path: Path
) -> None:
    ini = scripted_ini(tmp_path)
    log = tmp_path / "worker.log"
    worker = start_worker(ini)
    try:
        wait_until(lambda: logged(log, "consumer starting"), "the consumer to start")

        ini.write_text(ini.read_text().replace("concurrency = 4", "concurrency = 9")
                       .replace("level = INFO", "level = DEBUG")
                       .replace("shutdown_timeout = 5",
                                "shutdown_timeout = 6\nstats_interval = 0.5"))
        worker.send_signal(signal.SIGHUP)
        wait_until(lambda: logged(log, "[consumer] concurrency is now 9"), "the reload")
        wait_until(lambda: logged(log, "progress: "), "a progress line at the new interval")
        wait_until(lambda: logged(log, "| DEBUG"), "a DEBUG line")

        good = ini.read_text()
        ini.write_text(good.replace("concurrency = 9", "concurrency = lots")
                       .replace("level = DEBUG", "level = LOUD"))
        worker.send_signal(signal.SIGHUP)
        wait_until(lambda: logged(log, "reload refused"), "the refusal")
        ini.write_text(good.replace("concurrency = 9", "concurrency = 2"))
        worker.send_signal(signal.SIGHUP)
        wait_until(lambda: logged(log, "[consumer] concurrency is now 2"), "a second reload")
        assert worker.poll() is None, "a reload must never stop the worker"
    finally:
        assert stop_worker(worker) == 0

    text = log.read_text()
    assert "[consumer] shutdown_timeout changed from 5.0 to 6.0, which needs a restart" in text
    assert "[consumer] stats_interval is now 0.5" in text
    assert "[logging] level is now DEBUG" in text
    refusal = text[text.index("reload refused"):]
    assert "[consumer] concurrency" in refusal and "[logging] level" in refusal
    assert "concurrency is now lots" not in text
