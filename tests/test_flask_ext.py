"""The Flask extension: views enqueue into real queues, a worker then runs the jobs."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from flask import Flask, jsonify, request

from async_consumer.flask import AsyncConsumerExtension
from async_consumer.jobs import JobError
from conftest import REPO, Target, cli, read_results, write_ini

SQLITE_INI = """\
[consumer]
concurrency = 10
idle_poll_max = 0.1
[provider]
type = sqlite
path = queue.sqlite3
[retry]
backoff_base = 0.05
[results]
path = results.jsonl
"""


def make_app(ini: Path) -> tuple[Flask, AsyncConsumerExtension]:
    app = Flask("shop")
    app.config["ASYNC_CONSUMER_CONFIG"] = str(ini)
    jobs = AsyncConsumerExtension()
    jobs.init_app(app)

    @app.post("/orders/<int:number>")
    def order(number: int):
        stored = jobs.enqueue({"id": f"order-{number}", "method": "POST",
                               "url": request.args["hook"], "json": {"order": number}})
        return jsonify(stored=stored)

    return app, jobs


def enqueue_from_threads(app: Flask, hook: str, count: int) -> list[int]:
    """Each view call from a thread of its own, as a threaded server would make them."""
    statuses: list[int] = []

    def call(number: int) -> None:
        with app.test_client() as client:
            statuses.append(client.post(f"/orders/{number}?hook={hook}").status_code)

    threads = [threading.Thread(target=call, args=(number,)) for number in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return statuses


def test_views_enqueue_into_the_sqlite_queue_and_the_worker_sends_them(
    tmp_path: Path, fresh_target: Target
) -> None:
    ini = write_ini(tmp_path, SQLITE_INI)
    app, jobs = make_app(ini)

    statuses = enqueue_from_threads(app, f"{fresh_target.url}/echo", 12)
    with app.app_context():
        producer = jobs.producer()
        assert jobs.producer() is producer
    jobs.close(app)
    done = cli("run", "-c", str(ini), "--until-empty", cwd=tmp_path)

    assert statuses == [200] * 12
    assert done.returncode == 0, done.stderr
    results = read_results(tmp_path / "results.jsonl")
    assert sorted(result["id"] for result in results) == sorted(f"order-{n}" for n in range(12))
    assert {result["status"] for result in results} == {"ok"}
    assert fresh_target.stats()["total"] == 12


def test_a_bad_job_is_refused_in_the_view_and_nothing_is_stored(tmp_path: Path) -> None:
    ini = write_ini(tmp_path, SQLITE_INI)
    app, jobs = make_app(ini)

    with app.app_context(), pytest.raises(JobError, match="job 2"):
        jobs.enqueue([{"url": "http://127.0.0.1:9/a"}, {"url": "ftp://nowhere"}])
    jobs.close(app)

    with sqlite3.connect(tmp_path / "queue.sqlite3") as db:
        tables = [row[0] for row in db.execute("select name from sqlite_master "
                                               "where type = 'table'")]
        counts = [db.execute(f"select count(*) from {table}").fetchone()[0]
                  for table in tables if not table.startswith("sqlite_")]
    assert sum(counts) == 0


def test_init_app_needs_the_worker_ini() -> None:
    with pytest.raises(RuntimeError, match="ASYNC_CONSUMER_CONFIG"):
        AsyncConsumerExtension(Flask("bare"))


@pytest.fixture
def redis_queue(redis_server: None) -> Iterator[str]:
    from redis_support import delete_queue, new_queue_name

    queue = new_queue_name()
    yield queue
    delete_queue(queue)


def test_views_enqueue_into_redis_and_a_worker_sends_them(
    tmp_path: Path, fresh_target: Target, redis_queue: str
) -> None:
    from redis_support import worker_ini

    ini = worker_ini(tmp_path, redis_queue)
    app, jobs = make_app(ini)

    statuses = enqueue_from_threads(app, f"{fresh_target.url}/echo", 8)
    jobs.close(app)
    done = cli("run", "-c", str(ini), "--until-empty", cwd=tmp_path)

    assert statuses == [200] * 8
    assert done.returncode == 0, done.stderr
    results = read_results(tmp_path / "results.jsonl")
    assert sorted(result["id"] for result in results) == sorted(f"order-{n}" for n in range(8))
    assert fresh_target.stats()["total"] == 8


def test_importing_the_extension_patches_nothing() -> None:
    done = subprocess.run(
        [sys.executable, "-c", "import async_consumer.flask, flask\n"
         "from gevent import monkey\nprint(monkey.is_module_patched('socket'))"],
        cwd=REPO, capture_output=True, text=True, timeout=60,
    )
    assert done.stdout.strip() == "False", done.stderr
