"""examples/flask_app works as its README says: enqueue, fan out, run the worker."""

from __future__ import annotations

import importlib.util
import json
import shutil
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

from conftest import REPO, Target, read_results
from flask_support import get, gunicorn

pytestmark = pytest.mark.slow

EXAMPLE = REPO / "examples" / "flask_app"


@pytest.fixture
def shop_env(tmp_path: Path, fresh_target: Target, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The example's settings pointed at this test's queue file and target."""
    ini = tmp_path / "worker.ini"
    shutil.copy(EXAMPLE / "worker.ini", ini)
    monkeypatch.setenv("SHOP_WORKER_INI", str(ini))
    monkeypatch.setenv("SHOP_ORDER_HOOK", f"{fresh_target.url}/echo")
    suppliers = [f"{fresh_target.url}/delay/300"] * 3 + [f"{fresh_target.url}/hang"]
    monkeypatch.setenv("SHOP_SUPPLIERS", " ".join(suppliers))
    return ini


def load_example_app() -> ModuleType:
    spec = importlib.util.spec_from_file_location("flask_example_app", EXAMPLE / "app.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_orders_are_queued_by_the_view_and_sent_by_the_worker(
    shop_env: Path, fresh_target: Target
) -> None:
    shop = load_example_app()
    with shop.app.test_client() as client:
        answers = [client.post(f"/orders/{n}", json=[{"sku": "tea"}]) for n in range(5)]
    shop.jobs.close(shop.app)

    done = subprocess.run(
        [sys.executable, "-m", "async_consumer.flask", "run", "--app", "app:app",
         "--until-empty"],
        cwd=EXAMPLE, capture_output=True, text=True, timeout=120,
    )

    assert [answer.status_code for answer in answers] == [202] * 5
    assert done.returncode == 0, done.stderr
    results = read_results(shop_env.parent / "results.jsonl")
    assert sorted(result["id"] for result in results) == [f"order-{n}" for n in range(5)]
    assert {result["status"] for result in results} == {"ok"}
    assert fresh_target.stats()["total"] == 5


def test_the_prices_view_fans_out_under_a_sync_gunicorn_worker(
    shop_env: Path, fresh_target: Target, tmp_path: Path
) -> None:
    with gunicorn(EXAMPLE, "app:app", "--worker-class", "sync", log_dir=tmp_path) as url:
        prices = json.loads(get(f"{url}/prices"))

    assert [price["ok"] for price in prices] == [True, True, True, False]
    assert [price["timed_out"] for price in prices] == [False, False, False, True]
    assert fresh_target.stats()["max_in_flight"] == 4
