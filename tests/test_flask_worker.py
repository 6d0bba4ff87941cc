"""The worker run inside a Flask application's context, patched before the app's imports."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REPO, write_ini

pytestmark = pytest.mark.slow

#: A small application with a database connection per app context (as a database
#: extension keeps its session), and a provider of its own whose tasks and result
#: handling write through that connection.
WORKER_APP = '''
import sqlite3

import ssl  # an application imports ssl (through requests, a driver...) at its top
from flask import Flask, current_app, g
from gevent import monkey

import gevent
from async_consumer import Promise, Provider
from async_consumer.flask import AsyncConsumerExtension

PATCHED_BEFORE_IMPORT = monkey.is_module_patched("socket")

app = Flask("shop")
app.config["ASYNC_CONSUMER_CONFIG"] = "worker.ini"
app.config["DATABASE"] = "shop.sqlite3"
AsyncConsumerExtension(app)


def db():
    if "db" not in g:
        g.db = sqlite3.connect(current_app.config["DATABASE"], timeout=10)
    return g.db


@app.teardown_appcontext
def close_db(error):
    connection = g.pop("db", None)
    if connection is not None:
        connection.commit()
        connection.close()


class Order(Promise):
    def run(self):
        gevent.sleep(0.05)  # the tasks overlap, each in an app context of its own
        db().execute("insert into events values (?, ?, ?)",
                     (self.id, "ran", f"{current_app.name} {PATCHED_BEFORE_IMPORT}"))


class Orders(Provider):
    def __init__(self, count):
        self.left = int(count)

    def get(self):
        if not self.left:
            return None
        self.left -= 1
        db().execute("insert into events values (?, ?, ?)", (f"o{self.left}", "made", ""))
        return Order(f"o{self.left}")

    def settle(self, promise):
        db().execute("insert into events values (?, ?, ?)",
                     (promise.id, "settled", promise.outcome.value))
'''

WORKER_INI = """\
[consumer]
concurrency = 4
idle_poll_max = 0.1
[provider]
type = shopworker:Orders
count = 6
"""


@pytest.fixture
def app_dir(tmp_path: Path) -> Path:
    (tmp_path / "shopworker.py").write_text(WORKER_APP)
    write_ini(tmp_path, WORKER_INI)
    with sqlite3.connect(tmp_path / "shop.sqlite3") as connection:
        connection.execute("create table events (task, what, detail)")
    return tmp_path


def events(app_dir: Path) -> dict[str, list[tuple[str, str]]]:
    found: dict[str, list[tuple[str, str]]] = {}
    with sqlite3.connect(app_dir / "shop.sqlite3") as connection:
        for task, what, detail in connection.execute("select * from events order by rowid"):
            found.setdefault(what, []).append((task, detail))
    return found


def check_worker_ran_in_context(app_dir: Path, done: subprocess.CompletedProcess) -> None:
    assert done.returncode == 0, done.stdout + done.stderr
    seen = events(app_dir)
    tasks = sorted(f"o{n}" for n in range(6))
    assert sorted(task for task, _ in seen["made"]) == tasks
    assert sorted(seen["ran"]) == [(task, "shop True") for task in tasks]
    assert sorted(seen["settled"]) == [(task, "ok") for task in tasks]


def test_python_m_async_consumer_flask_patches_then_runs_the_worker_in_app_context(
    app_dir: Path
) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "async_consumer.flask", "run", "--app", "shopworker:app",
         "--until-empty"],
        cwd=app_dir, capture_output=True, text=True, timeout=120,
    )

    check_worker_ran_in_context(app_dir, done)


def test_the_flask_command_reexecutes_itself_patched(app_dir: Path) -> None:
    flask_command = Path(sys.executable).with_name("flask")
    done = subprocess.run(
        [str(flask_command), "--app", "shopworker:app", "async-consumer", "run",
         "--until-empty"],
        cwd=app_dir, capture_output=True, text=True, timeout=120,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )

    check_worker_ran_in_context(app_dir, done)
