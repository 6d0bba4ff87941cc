"""Secrets stay out of a real worker's log, and task lines name their job and host."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from async_consumer.redaction import redact_text
from conftest import Target, cli, wait_until
from daemon_support import scripted_ini, start_worker, stop_worker

SECRETS = ("pw-in-url-1", "tok-in-query-2", "pw-in-query-3", "auth-header-4", "cookie-5",
           "broker-pw-6")


@pytest.mark.parametrize(("text", "kept"), [
    ("amqp://app:broker-pw-6@10.0.0.1:5672/%2F", "amqp://app:***@10.0.0.1:5672/%2F"),
    ("redis://:broker-pw-6@127.0.0.1:6379/0", "redis://:***@127.0.0.1:6379/0"),
    ("GET https://u:pw-in-url-1@example.org/a?token=tok-in-query-2&page=3",
     "GET https://u:***@example.org/a?token=***&page=3"),
    ("Authorization: Bearer auth-header-4", "Authorization: ***"),
    ("{'Cookie': 'session=cookie-5', 'Accept': '*/*'}", "{'Cookie': '***', 'Accept': '*/*'}"),
    ('"password": "pw-in-query-3"', '"password": "***"'),
    ("task t1 (GET 127.0.0.1:8080) ok in 3.0 ms", "task t1 (GET 127.0.0.1:8080) ok in 3.0 ms"),
])
def test_redact_text(text: str, kept: str) -> None:
    assert redact_text(text) == kept


@pytest.mark.slow
@pytest.mark.parametrize("log_format", ["json", "text"])
def test_a_real_run_logs_no_secret_and_names_each_task_and_host(
    tmp_path: Path, target: Target, log_format: str
) -> None:
    secret_headers = {"Authorization": "Bearer auth-header-4", "Cookie": "session=cookie-5"}
    jobs = [
        {"id": "refused-job", "max_attempts": 1, "headers": secret_headers,
         "url": "http://alice:pw-in-url-1@127.0.0.1:1/x?token=tok-in-query-2"
                "&password=pw-in-query-3"},
        {"id": "failing-job", "max_attempts": 1, "headers": secret_headers,
         "url": target.url.replace("http://", "http://bob:pw-in-url-1@") + "/status/500"},
        {"id": "fine-job", "headers": secret_headers,
         "url": f"{target.url}/ok?token=tok-in-query-2"},
    ]
    (tmp_path / "jobs.jsonl").write_text("".join(json.dumps(job) + "\n" for job in jobs))
    (tmp_path / "worker.ini").write_text(
        "[consumer]\nidle_poll_max = 0.2\n[provider]\npath = queue.sqlite3\n"
        "[results]\npath = results.jsonl\nfsync = false\n"
        f"[logging]\nlevel = DEBUG\nformat = {log_format}\nfile = worker.log\n"
    )
    assert cli("enqueue", "-c", "worker.ini", "jobs.jsonl", cwd=tmp_path).returncode == 0

    done = cli("run", "-c", "worker.ini", "--until-empty", cwd=tmp_path)

    assert done.returncode == 0, done.stderr
    log = (tmp_path / "worker.log").read_text()
    for secret in SECRETS:
        assert secret not in log + done.stdout + done.stderr, secret
    task_lines = [line for line in log.splitlines() if "task " in line]
    for job_id in ("refused-job", "failing-job", "fine-job"):
        mine = [line for line in task_lines if job_id in line]
        assert mine, f"no line names {job_id}"
        assert all("127.0.0.1" in line for line in mine), mine


@pytest.mark.slow
@pytest.mark.parametrize("log_format", ["json", "text"])
def test_an_error_quoting_credentials_is_logged_masked(tmp_path: Path, log_format: str) -> None:
    ini = scripted_ini(tmp_path, provider="leaks = 2\n",
                       extra=f"format = {log_format}\nfile = worker.log\n")
    worker = start_worker(ini, log=tmp_path / "stderr.log")
    log = tmp_path / "worker.log"
    try:
        wait_until(lambda: log.exists() and log.read_text().count("leaky-") >= 2,
                   "both leaky tasks to be logged")
    finally:
        assert stop_worker(worker) == 0

    text = log.read_text() + (tmp_path / "stderr.log").read_text()
    for secret in SECRETS:
        assert secret not in text, secret
    assert "https://svc:***@api.example/hook?token=***" in text
    assert "ValueError" in text and "Traceback" in text
