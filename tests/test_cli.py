"""The ``async-consumer`` command end to end: real processes, a real queue file and a
real HTTP target on loopback."""

from __future__ import annotations

import contextlib
import json
import os
import re
import sqlite3
import subprocess
import sys
import uuid
from collections import Counter
from pathlib import Path

import pytest

from conftest import Target, cli, read_results, write_ini

QUEUE_NAME = "queue.sqlite3"
RESULTS_NAME = "results.jsonl"

#: Sections every test INI starts from; small backoffs keep retries fast.
BASE_SETTINGS: dict[str, dict[str, str]] = {
    "consumer": {"concurrency": "20", "idle_poll_max": "0.2"},
    "provider": {"path": QUEUE_NAME},
    "retry": {"backoff_base": "0.05", "backoff_max": "0.2"},
    "results": {"path": RESULTS_NAME, "fsync": "false"},
}

PROVIDER_MODULE = "acli_test_providers"
PROVIDER_SOURCE = '''\
"""A provider for the CLI tests, loaded through [provider] type = module:Class."""

from async_consumer import Provider


class UrlProvider(Provider):
    """Takes a broker URL and a password, as a real queue provider would."""

    def __init__(self, url, password=""):
        self.url = url

    def get(self):
        return None
'''


def make_ini(directory: Path, overrides: dict[str, dict[str, str]] | None = None,
             name: str = "worker.ini") -> Path:
    """Write BASE_SETTINGS merged with ``overrides`` as an INI file."""
    sections = {section: dict(values) for section, values in BASE_SETTINGS.items()}
    for section, values in (overrides or {}).items():
        sections.setdefault(section, {}).update(values)
    text = "".join(
        f"[{section}]\n" + "".join(f"{key} = {value}\n" for key, value in values.items())
        for section, values in sections.items()
    )
    return write_ini(directory, text, name)


def write_jobs(path: Path, jobs: list[dict]) -> Path:
    path.write_text("".join(json.dumps(job) + "\n" for job in jobs))
    return path


def write_provider_module(directory: Path) -> dict[str, str]:
    """Put the test providers' module in ``directory``; the env that makes it importable."""
    (directory / f"{PROVIDER_MODULE}.py").write_text(PROVIDER_SOURCE)
    return {"PYTHONPATH": os.pathsep.join(filter(None, [
        str(directory), os.environ.get("PYTHONPATH")]))}


def queued_rows(queue_path: Path) -> int:
    """Live jobs in the queue file, read with plain sqlite3."""
    if not queue_path.exists():
        return 0
    with contextlib.closing(sqlite3.connect(queue_path)) as connection:
        return connection.execute("SELECT COUNT(*) FROM jobs").fetchone()[0]


def check_counts(directory: Path, ini: str = "worker.ini") -> dict[str, int]:
    """The queue counts that ``async-consumer check`` prints."""
    done = cli("check", "-c", ini, cwd=directory)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)["queue"]


# -- the happy path ----------------------------------------------------------------------


def test_three_hundred_mixed_jobs_each_get_exactly_one_correct_result_line(
    tmp_path: Path, target: Target
) -> None:
    run_key = uuid.uuid4().hex[:12]
    jobs = []
    expected: dict[str, tuple[str, int, int]] = {}
    for number in range(75):
        jobs.append({"id": f"ok-{number}", "url": f"{target.url}/ok"})
        expected[f"ok-{number}"] = ("ok", 200, 1)
        jobs.append({"id": f"missing-{number}", "url": f"{target.url}/status/404"})
        expected[f"missing-{number}"] = ("failed", 404, 1)
        jobs.append({"id": f"flaky-{number}",
                     "url": f"{target.url}/flaky/{run_key}-{number}/2"})
        expected[f"flaky-{number}"] = ("ok", 200, 3)
        jobs.append({"id": f"slow-{number}", "url": f"{target.url}/delay/50"})
        expected[f"slow-{number}"] = ("ok", 200, 1)
    write_jobs(tmp_path / "jobs.jsonl", jobs)
    make_ini(tmp_path, {"consumer": {"concurrency": "50"}})

    enqueued = cli("enqueue", "-c", "worker.ini", "jobs.jsonl", cwd=tmp_path)
    assert enqueued.returncode == 0, enqueued.stderr
    assert "accepted 300" in enqueued.stdout

    ran = cli("run", "-c", "worker.ini", "--until-empty", cwd=tmp_path, timeout=60)
    assert ran.returncode == 0, ran.stderr

    results = read_results(tmp_path / RESULTS_NAME)
    per_id = Counter(record["id"] for record in results)
    assert set(per_id) == set(expected)
    assert [job_id for job_id, seen in per_id.items() if seen != 1] == []
    for record in results:
        status, code, attempts = expected[record["id"]]
        assert (record["status"], record["status_code"], record["attempts"]) == (
            status, code, attempts), record
        assert isinstance(record["elapsed_ms"], (int, float))
        assert (record["error"] is None) == (status == "ok"), record
    assert all("404" in record["error"] for record in results
               if record["id"].startswith("missing-"))

    summary = re.search(r"done: (\d+) job\(s\).*: (\d+) ok, (\d+) failed \((\d+) "
                        r"dead-lettered\), (\d+) retried", ran.stdout)
    assert summary is not None, ran.stdout
    assert [int(number) for number in summary.groups()] == [300, 225, 75, 0, 150]
    assert queued_rows(tmp_path / QUEUE_NAME) == 0


# -- retries and the dead-letter table ---------------------------------------------------


def test_exhausted_retries_dead_letter_the_job_and_requeue_restarts_its_attempts(
    tmp_path: Path, fresh_target: Target
) -> None:
    url = fresh_target.url
    write_jobs(tmp_path / "jobs.jsonl", [
        {"id": "always-503", "url": f"{url}/status/503"},
        # Fails twice, so it dies on the first run and succeeds on the third request.
        {"id": "flaky-twice", "url": f"{url}/flaky/requeue/2"},
    ])
    make_ini(tmp_path, {"retry": {"max_attempts": "2"}})
    assert cli("enqueue", "-c", "worker.ini", "jobs.jsonl", cwd=tmp_path).returncode == 0

    first = cli("run", "-c", "worker.ini", "--until-empty", cwd=tmp_path, timeout=60)
    assert first.returncode == 0, first.stderr
    by_id = {record["id"]: record for record in read_results(tmp_path / RESULTS_NAME)}
    assert by_id["always-503"]["status"] == "failed"
    assert by_id["always-503"]["attempts"] == 2
    assert by_id["always-503"]["status_code"] == 503
    assert by_id["flaky-twice"]["attempts"] == 2
    assert fresh_target.stats()["total"] == 4

    listed = cli("dead", "list", "-c", "worker.ini", cwd=tmp_path)
    assert listed.returncode == 0, listed.stderr
    dead = {row["id"]: row for row in map(json.loads, listed.stdout.splitlines())}
    assert set(dead) == {"always-503", "flaky-twice"}
    assert dead["always-503"]["attempts"] == 2
    assert "gave up after 2 attempt(s)" in dead["always-503"]["reason"]
    assert "503" in dead["always-503"]["reason"]

    requeued = cli("dead", "requeue", "--all", "-c", "worker.ini", cwd=tmp_path)
    assert requeued.returncode == 0, requeued.stderr
    assert "requeued 2" in requeued.stdout
    assert check_counts(tmp_path) == {"ready": 2, "delayed": 0, "leased": 0, "dead": 0}

    second = cli("run", "-c", "worker.ini", "--until-empty", cwd=tmp_path, timeout=60)
    assert second.returncode == 0, second.stderr
    later = read_results(tmp_path / RESULTS_NAME)[2:]
    by_id = {record["id"]: record for record in later}
    # With the counter restarted the flaky job gets a real first attempt and succeeds;
    # a carried-over counter (3 > 2) would bury it unrun.
    assert by_id["flaky-twice"]["status"] == "ok"
    assert by_id["flaky-twice"]["attempts"] == 1
    assert by_id["always-503"]["attempts"] == 2
    assert "gave up after 2 attempt(s)" in by_id["always-503"]["error"]
    assert fresh_target.stats()["total"] == 4 + 1 + 2


# -- configuration errors ----------------------------------------------------------------

BAD_CONFIGS = [
    pytest.param({"consumer": {"concurrency": "0"}}, "worker.ini",
                 ["[consumer] concurrency", "'0'", "out of range", "an integer from 1"],
                 id="concurrency-zero"),
    pytest.param({"consumer": {"concurrency": "abc"}}, "worker.ini",
                 ["[consumer] concurrency", "'abc'", "not a whole number",
                  "an integer from 1"],
                 id="concurrency-not-a-number"),
    pytest.param({"consumer": {"concurrancy": "5"}}, "worker.ini",
                 ["[consumer] concurrancy", "unknown key", "did you mean 'concurrency'",
                  "expected one of: concurrency"],
                 id="unknown-key"),
    pytest.param({"consumr": {"concurrency": "5"}}, "worker.ini",
                 ["[consumr]", "unknown section", "expected one of: [consumer]"],
                 id="unknown-section"),
    pytest.param(None, "missing.ini", ["missing.ini", "file not found"],
                 id="missing-file"),
    pytest.param({"provider": {"type": "acli_no_such_module:Provider"}}, "worker.ini",
                 ["[provider] type", "'acli_no_such_module:Provider'",
                  "ModuleNotFoundError", "expected an importable package.module:Class"],
                 id="provider-does-not-import"),
    pytest.param({"consumer": {"mode": "fast"}}, "worker.ini",
                 ["[consumer] mode", "'fast'", "unknown mode", "expected one of: sliding"],
                 id="unknown-mode"),
    pytest.param({"http": {"verify": "missing-ca.pem"}}, "worker.ini",
                 ["[http] verify", "'missing-ca.pem'", "no CA bundle file exists",
                  "path of an existing CA bundle file"],
                 id="missing-ca-bundle"),
    pytest.param({"http": {"user_agent": "${ACLI_SURELY_UNSET_VAR}"}}, "worker.ini",
                 ["[http] user_agent", "'${ACLI_SURELY_UNSET_VAR}'",
                  "ACLI_SURELY_UNSET_VAR is not set", "expected ACLI_SURELY_UNSET_VAR to be set"],
                 id="unset-environment-variable"),
]


@pytest.mark.parametrize(("overrides", "config_name", "fragments"), BAD_CONFIGS)
def test_a_bad_config_stops_run_with_exit_2_before_touching_any_file(
    tmp_path: Path, overrides: dict | None, config_name: str, fragments: list[str]
) -> None:
    if overrides is not None:
        make_ini(tmp_path, overrides, name=config_name)

    done = cli("run", "-c", config_name, "--until-empty", cwd=tmp_path, timeout=30)

    assert done.returncode == 2, (done.stdout, done.stderr)
    assert "configuration error" in done.stderr
    assert config_name in done.stderr
    for fragment in fragments:
        assert fragment in done.stderr, (fragment, done.stderr)
    assert "Traceback" not in done.stderr
    assert not (tmp_path / QUEUE_NAME).exists()
    assert not (tmp_path / RESULTS_NAME).exists()


def test_a_results_path_in_a_missing_directory_stops_run_before_the_queue_is_created(
    tmp_path: Path
) -> None:
    make_ini(tmp_path, {"results": {"path": "no-such-dir/results.jsonl"}})

    done = cli("run", "-c", "worker.ini", "--until-empty", cwd=tmp_path, timeout=30)

    assert done.returncode == 2, (done.stdout, done.stderr)
    assert "[results] path" in done.stderr
    assert "no-such-dir" in done.stderr
    assert not (tmp_path / QUEUE_NAME).exists()


def test_the_base_config_used_for_bad_cases_does_create_the_queue_and_results(
    tmp_path: Path
) -> None:
    """The control for the case above: without the bad line, the same files appear."""
    make_ini(tmp_path)

    done = cli("run", "-c", "worker.ini", "--until-empty", cwd=tmp_path, timeout=30)

    assert done.returncode == 0, done.stderr
    assert (tmp_path / QUEUE_NAME).exists()
    assert (tmp_path / RESULTS_NAME).exists()


# -- job lines ---------------------------------------------------------------------------

GOOD_JOB = '{"id": "good-%d", "url": "http://127.0.0.1:9/ok"}'
BAD_JOB_LINES = {
    2: "this is not json",
    3: '["http://127.0.0.1:9/ok"]',
    4: '{"id": "no-url"}',
    6: '{"url": "ftp://127.0.0.1/file"}',
    7: '{"url": "http://127.0.0.1:9/ok", "colour": "red"}',
    8: '{"url": "http://127.0.0.1:9/ok", "method": "FETCH"}',
    10: '{"url": "http://127.0.0.1:9/ok", "max_attempts": 0}',
    11: '{"url": "http://127.0.0.1:9/ok", "json": {"a": 1}, "data": "a=1"}',
}
BAD_LINE_REASONS = {
    2: "not valid JSON",
    3: "must be a JSON object",
    4: "'url' is required",
    6: "'ftp://127.0.0.1/file'",
    7: "unknown key(s) colour",
    8: "'method' must be one of",
    10: "'max_attempts' must be a whole number",
    11: "either 'json' or 'data'",
}
GOOD_LINE_NUMBERS = (1, 5, 9, 12)


def test_bad_job_lines_are_all_reported_by_number_and_nothing_is_enqueued(
    tmp_path: Path
) -> None:
    lines = [BAD_JOB_LINES.get(number, GOOD_JOB % number) for number in range(1, 13)]
    (tmp_path / "jobs.jsonl").write_text("\n".join(lines) + "\n")
    make_ini(tmp_path)

    done = cli("enqueue", "-c", "worker.ini", "jobs.jsonl", cwd=tmp_path)

    assert done.returncode == 1, (done.stdout, done.stderr)
    reported = {
        int(number): reason for number, reason in
        re.findall(r"^async-consumer: jobs\.jsonl: line (\d+): (.*)$", done.stderr, re.M)
    }
    assert sorted(reported) == sorted(BAD_JOB_LINES)
    for number, reason in BAD_LINE_REASONS.items():
        assert reason in reported[number], (number, reported[number])
    assert "nothing was enqueued" in done.stderr
    assert "accepted" not in done.stdout
    assert check_counts(tmp_path)["ready"] == 0

    # The control: the good lines alone are accepted, so the count above could move.
    (tmp_path / "good.jsonl").write_text(
        "".join(GOOD_JOB % number + "\n" for number in GOOD_LINE_NUMBERS))
    accepted = cli("enqueue", "-c", "worker.ini", "good.jsonl", cwd=tmp_path)
    assert accepted.returncode == 0, accepted.stderr
    assert check_counts(tmp_path)["ready"] == len(GOOD_LINE_NUMBERS)


def test_jobs_can_be_enqueued_from_standard_input_and_then_run(
    tmp_path: Path, target: Target
) -> None:
    make_ini(tmp_path)
    lines = "".join(json.dumps({"id": f"piped-{number}", "url": f"{target.url}/ok"}) + "\n"
                    for number in range(3))

    enqueued = cli("enqueue", "-c", "worker.ini", "-", cwd=tmp_path, stdin=lines)
    assert enqueued.returncode == 0, enqueued.stderr
    assert "accepted 3" in enqueued.stdout

    ran = cli("run", "-c", "worker.ini", "--until-empty", cwd=tmp_path, timeout=30)
    assert ran.returncode == 0, ran.stderr
    results = read_results(tmp_path / RESULTS_NAME)
    assert sorted(record["id"] for record in results) == ["piped-0", "piped-1", "piped-2"]
    assert {record["status"] for record in results} == {"ok"}


# -- check -------------------------------------------------------------------------------


def test_check_prints_the_settings_in_force_as_json(tmp_path: Path) -> None:
    make_ini(tmp_path, {"consumer": {"concurrency": "37"},
                        "retry": {"max_attempts": "7"}})

    done = cli("check", "-c", "worker.ini", cwd=tmp_path)

    assert done.returncode == 0, done.stderr
    described = json.loads(done.stdout)
    assert described["source"] == "worker.ini"
    assert described["consumer"]["concurrency"] == 37
    assert described["retry"]["max_attempts"] == 7
    assert described["provider"]["path"] == str(tmp_path / QUEUE_NAME)
    assert described["queue"] == {"ready": 0, "delayed": 0, "leased": 0, "dead": 0}
    assert "worker.ini: OK" in done.stderr


def test_check_masks_a_password_inside_a_custom_provider_url(tmp_path: Path) -> None:
    env = write_provider_module(tmp_path)
    write_ini(tmp_path, (
        "[provider]\n"
        f"type = {PROVIDER_MODULE}:UrlProvider\n"
        "url = amqp://worker:s3cr3t-Pw@127.0.0.1:5672/jobs\n"
        "password = hunter2-hunter2\n"
    ))

    done = cli("check", "-c", "worker.ini", cwd=tmp_path, env=env)

    assert done.returncode == 0, done.stderr
    options = json.loads(done.stdout)["provider"]["options"]
    assert options["url"] == "amqp://worker:***@127.0.0.1:5672/jobs"
    assert options["password"] == "***"
    assert "s3cr3t" not in done.stdout + done.stderr
    assert "hunter2" not in done.stdout + done.stderr

    # The startup log line of a run carries the same settings, masked the same way.
    ran = cli("run", "-c", "worker.ini", "--until-empty", cwd=tmp_path, timeout=30, env=env)
    assert ran.returncode == 0, ran.stderr
    assert "amqp://worker:***@127.0.0.1:5672/jobs" in ran.stderr
    assert "s3cr3t" not in ran.stdout + ran.stderr
    assert "hunter2" not in ran.stdout + ran.stderr


# -- monkey-patching order ---------------------------------------------------------------


def test_the_command_patches_before_ssl_is_imported_so_gevent_never_warns(
    tmp_path: Path
) -> None:
    make_ini(tmp_path)
    # MonkeyPatchWarning is a RuntimeWarning. "-W error::gevent.monkey.MonkeyPatchWarning"
    # would be ignored: Python parses -W before gevent can be imported.
    strict = [sys.executable, "-W", "error::RuntimeWarning"]

    done = subprocess.run([*strict, "-m", "async_consumer", "check", "-c", "worker.ini"],
                          cwd=tmp_path, capture_output=True, text=True, timeout=30)

    assert done.returncode == 0, done.stderr
    assert "Invalid -W option" not in done.stderr
    assert "MonkeyPatchWarning" not in done.stderr

    # The control: the same flag does turn a late patch into a failure.
    late = subprocess.run(
        [*strict, "-c", "import requests; from gevent import monkey; monkey.patch_all()"],
        capture_output=True, text=True, timeout=30)
    assert late.returncode != 0
    assert "MonkeyPatchWarning" in late.stderr


def test_calling_main_after_requests_was_imported_fails_clearly_without_recursion(
    tmp_path: Path
) -> None:
    make_ini(tmp_path)
    code = ("import requests; from async_consumer.cli import main; "
            "raise SystemExit(main(['check', '-c', 'worker.ini']))")

    done = subprocess.run([sys.executable, "-c", code], cwd=tmp_path,
                          capture_output=True, text=True, timeout=30)

    assert done.returncode != 0
    assert "urllib3" in done.stderr
    assert "RecursionError" not in done.stderr
    assert "Traceback" not in done.stderr
    assert not (tmp_path / QUEUE_NAME).exists()


# -- logging -----------------------------------------------------------------------------


def test_loguru_enqueue_is_overridden_under_patching_and_every_log_line_arrives(
    tmp_path: Path, target: Target
) -> None:
    write_jobs(tmp_path / "jobs.jsonl",
               [{"id": f"logged-{number}", "url": f"{target.url}/ok"} for number in range(200)])
    make_ini(tmp_path, {"consumer": {"concurrency": "50"},
                        "logging": {"enqueue": "true", "file": "worker.log",
                                    "level": "debug"}})
    enqueued = cli("enqueue", "-c", "worker.ini", "jobs.jsonl", cwd=tmp_path, timeout=30)
    assert enqueued.returncode == 0, enqueued.stderr

    ran = cli("run", "-c", "worker.ini", "--until-empty", cwd=tmp_path, timeout=30)

    assert ran.returncode == 0, ran.stderr
    log = (tmp_path / "worker.log").read_text()
    assert "[logging] enqueue = true was overridden to false" in log
    logged_ok = set(re.findall(r"task (logged-\d+) \(GET [^)]*\) ok in", log))
    assert logged_ok == {f"logged-{number}" for number in range(200)}
    assert "consumer stopped:" in log
    assert len(read_results(tmp_path / RESULTS_NAME)) == 200


@pytest.mark.parametrize("to_file", [False, True], ids=["stderr", "file"])
def test_json_log_format_writes_one_json_object_per_line(
    tmp_path: Path, target: Target, to_file: bool
) -> None:
    logging_section = {"format": "json"}
    if to_file:
        logging_section["file"] = "worker.log"
    make_ini(tmp_path, {"logging": logging_section})
    write_jobs(tmp_path / "jobs.jsonl", [{"id": "json-log", "url": f"{target.url}/status/404"}])
    assert cli("enqueue", "-c", "worker.ini", "jobs.jsonl", cwd=tmp_path).returncode == 0

    ran = cli("run", "-c", "worker.ini", "--until-empty", cwd=tmp_path, timeout=30)

    assert ran.returncode == 0, ran.stderr
    text = (tmp_path / "worker.log").read_text() if to_file else ran.stderr
    lines = [line for line in text.splitlines() if line.strip()]
    records = [json.loads(line)["record"] for line in lines]
    assert len(records) >= 3
    messages = [record["message"] for record in records]
    assert any(message.startswith("consumer starting") for message in messages)
    assert any("json-log" in message and record["level"]["name"] == "WARNING"
               for message, record in zip(messages, records))
