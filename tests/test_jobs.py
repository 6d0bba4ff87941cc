"""The job format as a worker reads it back, and the result lines it writes.

A worker parses every job it runs through a faster path than a plain dataclass and
``json.loads``; these tests hold that path to the same answers.
"""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

import pytest

from async_consumer.jobs import HttpJob, JobError, decode_json, parse_job
from async_consumer.results import ResultsFile

FULL_JOB = {
    "id": "order-17", "method": "post", "url": "https://example.test:8443/hook?x=1",
    "headers": {"X-Key": "k"}, "params": {"a": [1, "b"]}, "json": {"order": 17},
    "timeout": [2, 10], "max_attempts": 3,
}


@pytest.mark.parametrize("record", [
    {"url": "http://127.0.0.1:8080/ok", "id": 17},
    {"url": "http://127.0.0.1:8080/ok", "id": "a", "json": None},
    {"url": "http://127.0.0.1:8080/ok", "id": "b", "data": "raw", "timeout": 1.5},
    FULL_JOB,
])
def test_a_parsed_job_is_the_job_the_dataclass_would_build(record: dict) -> None:
    job = parse_job(record)

    expected = HttpJob(**{**asdict(job)})
    assert job == expected and asdict(job) == asdict(expected)
    assert HttpJob.from_payload(job.to_payload()) == job
    assert HttpJob.from_payload(job.to_payload().encode()) == job
    with pytest.raises(AttributeError):
        job.url = "http://elsewhere.test/"  # type: ignore[misc]


def test_long_urls_are_checked_like_short_ones() -> None:
    url = "http://a.test/" + "x" * 5000

    assert parse_job({"url": url}).url == url
    assert parse_job({"url": url}).url == url


def test_a_job_without_an_id_gets_a_fresh_one_each_time() -> None:
    first = parse_job({"url": "http://127.0.0.1:8080/ok"})
    second = parse_job({"url": "http://127.0.0.1:8080/ok"})

    assert len(first.id) == 32 and first.id != second.id


@pytest.mark.parametrize("payload, reason", [
    ('{"url": "http://a.test/", "nope": 1, "also": 2}', "unknown key(s) also, nope"),
    ('{"url": "http://a.test/", "json": 1, "data": "x"}', "either 'json' or 'data'"),
    ('{"url": "ftp://a.test/"}', "must be an absolute http:// or https:// address"),
    ('{"url": "http://a.test:99999/"}', "'url' is not a valid address"),
    ('{"url": "http://a.test/x y"}', "spaces or control characters"),
    ('{"url": 5}', "'url' is required"),
    ('{"url": "http://a.test/' + "x" * 3000 + ' "}', "spaces or control characters"),
    ('{"url": "http://a.test/", "timeout": NaN}', "not JSON: NaN is not valid JSON"),
    ('\ufeff{"url": "http://a.test/"}', "not JSON: Unexpected UTF-8 BOM"),
    ('[' * 100_000, "not JSON: nested too deeply"),
])
def test_a_bad_payload_is_refused_with_its_reason_every_time(payload: str, reason: str) -> None:
    for _ in range(2):
        with pytest.raises(JobError, match=reason.replace("(", r"\(").replace(")", r"\)")):
            HttpJob.from_payload(payload)


def test_bytes_take_the_standard_decoding() -> None:
    assert decode_json('{"a": "é"}'.encode("utf-16")) == {"a": "é"}
    assert decode_json(b'{"a": 1}') == {"a": 1}
    with pytest.raises(ValueError):
        HttpJob.from_payload(b'{"url": "http://a.test/\xff"}')


def usual(**changes: object) -> dict:
    """A result line of the built-in job's shape, with some values changed."""
    return {"id": "a", "status": "ok", "status_code": 200, "attempts": 1, "elapsed_ms": 3.5,
            "error": None, "finished_at": 1796402510.123, **changes}


def test_result_lines_are_compact_json_one_per_record(tmp_path: Path) -> None:
    records = [
        usual(),
        usual(id="b\n\"é\x00", status="failed", status_code=None, attempts=2,
              elapsed_ms=None, error="boom\u2028 \U0001f600", finished_at=1796402511.0),
        usual(elapsed_ms=1e-07, finished_at=1.5e16, attempts=10**20, status_code=599),
        usual(elapsed_ms=float("nan")),
        usual(attempts=True, status_code=False),
        usual(finished_at=1796402510),
        {"id": "c", "status": "ok", "status_code": 200, "custom": [1, {"x": None}],
         "attempts": 1, "elapsed_ms": 0.0, "error": None, "finished_at": 1.0},
        {"status": "ok", "id": "d", "status_code": 200, "attempts": 1, "elapsed_ms": 0.0,
         "error": None, "finished_at": 1.0},
    ]
    results = ResultsFile(tmp_path / "results.jsonl")

    assert results.write_many(iter(records)) == len(records)
    assert results.write_many([]) == 0
    results.close()

    data = (tmp_path / "results.jsonl").read_bytes()
    assert data == b"".join(json.dumps(record, separators=(",", ":")).encode() + b"\n"
                            for record in records)


@pytest.mark.parametrize("url", ["ftp://hank:hunter2@127.0.0.1/", "http://hank:hunter2@bad host/"])
def test_a_refused_url_is_quoted_without_its_password(url: str) -> None:
    with pytest.raises(JobError) as refused:
        HttpJob.from_payload(json.dumps({"url": url}))

    assert "hunter2" not in str(refused.value)
    assert "hank:***@" in str(refused.value)
