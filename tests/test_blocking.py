"""A task that holds the hub is reported in the log, with the stack that names it."""

from __future__ import annotations

from pathlib import Path

import pytest

from conftest import wait_until
from daemon_support import scripted_ini, start_worker, stop_worker


@pytest.mark.slow
def test_a_hub_held_past_the_threshold_is_logged_with_the_blocking_function(
    tmp_path: Path
) -> None:
    ini = scripted_ini(tmp_path, provider="block_after = 1\nblock_seconds = 3\n",
                       extra="block_report_seconds = 0.5\nfile = worker.log\n")
    worker = start_worker(ini, log=tmp_path / "stderr.log")
    log = tmp_path / "worker.log"
    try:
        wait_until(lambda: log.exists() and "event loop was held" in log.read_text(),
                   "the blocked-hub report")
    finally:
        assert stop_worker(worker) == 0

    text = log.read_text()
    report = text[text.index("event loop was held"):]
    assert "WARNING" in text[:text.index("event loop was held")].splitlines()[-1]
    assert "hold_the_hub_hostage" in report
    assert "daemon_provider.py" in report
    assert "appears to be blocked" not in (tmp_path / "stderr.log").read_text()


@pytest.mark.slow
def test_without_a_threshold_nothing_watches_the_hub(tmp_path: Path) -> None:
    ini = scripted_ini(tmp_path, provider="block_after = 0.5\nblock_seconds = 1.5\n",
                       extra="file = worker.log\n")
    worker = start_worker(ini, log=tmp_path / "stderr.log")
    log = tmp_path / "worker.log"
    try:
        wait_until(lambda: log.exists() and "consumer starting" in log.read_text(),
                   "the start")
        wait_until(lambda: worker.poll() is None and _held_long_enough(tmp_path),
                   "the hog to have run", seconds=10)
    finally:
        assert stop_worker(worker) == 0

    assert "event loop was held" not in log.read_text()


def _held_long_enough(directory: Path) -> bool:
    """The scripted hog starts at 0.5 s and lasts 1.5 s: wait past both."""
    import time

    started = (directory / "worker.ini").stat().st_mtime
    return time.time() - started > 3.5
