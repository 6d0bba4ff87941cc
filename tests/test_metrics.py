"""The metrics and health endpoint of a real worker, scraped while it runs."""

from __future__ import annotations

import json
import re
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from conftest import Target, cli, wait_until
from daemon_support import scripted_ini, start_worker, stop_worker

ADDRESS = re.compile(r"metrics on (http://127\.0\.0\.1:\d+)/metrics")
METRICS_ON = "[metrics]\nenabled = true\nport = 0\n"


def endpoint(log: Path) -> str:
    """The base URL the worker logged, once it has."""
    found: list[str] = []

    def logged() -> bool:
        found.extend(ADDRESS.findall(log.read_text()))
        return bool(found)

    wait_until(logged, "the metrics address in the log")
    return found[0]


def fetch(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=10) as answer:
            return answer.status, answer.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode()


def scrape(base: str) -> dict[str, dict[tuple, float]]:
    """Every sample by metric name, then by its sorted labels."""
    status, text = fetch(f"{base}/metrics")
    assert status == 200
    samples: dict[str, dict[tuple, float]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels = tuple(sorted(sample.labels.items()))
            samples.setdefault(sample.name, {})[labels] = sample.value
    return samples


@pytest.mark.slow
def test_a_scrape_during_a_real_run_counts_jobs_by_outcome_and_bounded_host(
    tmp_path: Path, target: Target
) -> None:
    port = target.url.rsplit(":", 1)[1]
    jobs = [{"id": f"ok-{n}", "url": f"{target.url}/ok"} for n in range(30)]
    jobs += [{"id": f"gone-{n}", "url": f"http://localhost:{port}/status/404"}
             for n in range(10)]
    jobs += [{"id": "dead", "url": f"{target.url}/status/503", "max_attempts": 2}]
    (tmp_path / "jobs.jsonl").write_text("".join(json.dumps(job) + "\n" for job in jobs))
    ini = tmp_path / "worker.ini"
    ini.write_text(
        "[consumer]\nconcurrency = 5\nidle_poll_max = 0.2\n"
        "[provider]\npath = queue.sqlite3\n"
        "[retry]\nbackoff_base = 0.05\nbackoff_max = 0.1\njitter = 0\n"
        "[results]\npath = results.jsonl\nfsync = false\n"
        + METRICS_ON + "top_hosts = 1\n"
    )
    assert cli("enqueue", "-c", "worker.ini", "jobs.jsonl", cwd=tmp_path).returncode == 0

    worker = start_worker(ini)
    try:
        base = endpoint(tmp_path / "worker.log")
        wait_until(lambda: sum(scrape(base).get("async_consumer_tasks_total", {}).values())
                   >= 42, "every job to end")
        samples = scrape(base)
        health = fetch(f"{base}/healthz")
        ready = fetch(f"{base}/readyz")
        missing = fetch(f"{base}/nothing")
    finally:
        assert stop_worker(worker) == 0

    outcomes = {dict(labels)["outcome"]: value
                for labels, value in samples["async_consumer_tasks_total"].items()}
    # The 503 job ends as "retry" twice: once retried, once dead-lettered.
    assert outcomes == {"ok": 30, "failed": 10, "retry": 2}
    by_host = {tuple(value for _, value in labels): count
               for labels, count in samples["async_consumer_http_requests_total"].items()}
    hosts = {host for host, _ in by_host}
    assert hosts == {"127.0.0.1", "other"} or hosts == {"localhost", "other"}
    assert sum(by_host.values()) == 42
    assert samples["async_consumer_dead_lettered_total"][()] == 1
    assert samples["async_consumer_retries_total"][()] == 1
    assert samples["async_consumer_queue_depth"][()] == 0
    assert samples["async_consumer_tasks_in_flight"][()] == 0
    assert samples["async_consumer_task_duration_seconds_count"][()] == 42
    assert samples["async_consumer_task_duration_seconds_bucket"][(("le", "+Inf"),)] == 42
    assert samples["async_consumer_http_request_duration_seconds_count"][()] > 0
    assert health[0] == 200 and "ticked" in health[1]
    assert ready[0] == 200 and "sqlite" in ready[1]
    assert missing[0] == 404


@pytest.mark.slow
def test_healthz_fails_while_the_loop_is_stuck_and_recovers(tmp_path: Path) -> None:
    ini = scripted_ini(tmp_path, extra=METRICS_ON, provider="stall_after = 1\n"
                       "stall_seconds = 10\n")
    worker = start_worker(ini)
    try:
        base = endpoint(tmp_path / "worker.log")
        assert scrape(base)["async_consumer_queue_depth"][()] == 7
        wait_until(lambda: fetch(f"{base}/healthz")[0] == 503, "the loop to look stuck")
        status, text = fetch(f"{base}/healthz")
        wait_until(lambda: fetch(f"{base}/healthz")[0] == 200, "the loop to recover")
    finally:
        assert stop_worker(worker) == 0

    assert status == 503 and "last ticked" in text


def test_metrics_are_off_by_default_and_the_hook_stays_unset(tmp_path: Path) -> None:
    worker = start_worker(scripted_ini(tmp_path))
    try:
        wait_until(lambda: "consumer starting" in (tmp_path / "worker.log").read_text(),
                   "the consumer to start")
    finally:
        assert stop_worker(worker) == 0
    assert "metrics on" not in (tmp_path / "worker.log").read_text()


def test_check_shows_the_metrics_settings_and_refuses_a_bad_port(tmp_path: Path) -> None:
    (tmp_path / "worker.ini").write_text("[provider]\npath = queue.sqlite3\n"
                                         "[results]\npath = results.jsonl\n" + METRICS_ON)
    good = cli("check", "-c", "worker.ini", cwd=tmp_path)
    (tmp_path / "worker.ini").write_text(METRICS_ON.replace("port = 0", "port = 99999"))
    bad = cli("check", "-c", "worker.ini", cwd=tmp_path)

    assert good.returncode == 0, good.stderr
    assert json.loads(good.stdout)["metrics"] == {
        "enabled": True, "host": "127.0.0.1", "port": 0, "top_hosts": 20}
    assert bad.returncode == 2
    assert "[metrics] port" in bad.stderr
