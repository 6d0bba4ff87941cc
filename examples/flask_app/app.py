"""A synchronous Flask shop that sends webhooks through a queue and fans out price calls.

Run the web process as usual (no gevent, no patching)::

    gunicorn --workers 2 --threads 4 --chdir examples/flask_app app:app

and the worker, patched and inside the app's context, next to it::

    python -m async_consumer.flask run --app app:app      # from examples/flask_app
"""

from __future__ import annotations

import os
from pathlib import Path

import requests
from flask import Flask, jsonify, request

from async_consumer.fanout import fan_out
from async_consumer.flask import AsyncConsumerExtension

HERE = Path(__file__).resolve().parent

app = Flask("shop")
app.config["ASYNC_CONSUMER_CONFIG"] = os.environ.get("SHOP_WORKER_INI", str(HERE / "worker.ini"))
#: Where order webhooks go and which suppliers are asked for prices.
app.config["ORDER_HOOK"] = os.environ.get("SHOP_ORDER_HOOK", "http://127.0.0.1:8080/echo")
app.config["SUPPLIERS"] = os.environ.get(
    "SHOP_SUPPLIERS", "http://127.0.0.1:8080/delay/300 http://127.0.0.1:8080/delay/500"
).split()
jobs = AsyncConsumerExtension(app)


@app.get("/ping")
def ping() -> str:
    return "pong"


@app.post("/orders/<int:number>")
def place_order(number: int):
    """The webhook is queued, not sent: the view answers at once, the worker retries."""
    jobs.enqueue({
        "id": f"order-{number}",
        "method": "POST",
        "url": app.config["ORDER_HOOK"],
        "json": {"order": number, "items": request.get_json(silent=True) or []},
        "headers": {"Idempotency-Key": f"order-{number}"},
    })
    return jsonify(queued=f"order-{number}"), 202


@app.get("/prices")
def prices():
    """Every supplier is asked at once; the page never waits longer than the deadline."""
    calls = [requests.Request("GET", url) for url in app.config["SUPPLIERS"]]
    results = fan_out(calls, deadline=2.0, timeout=(1.0, 2.0))
    return jsonify([
        {"supplier": result.request.url if result.request is not None else None,
         "ok": result.ok, "timed_out": result.timed_out,
         "status": result.response.status_code if result.response is not None else None}
        for result in results
    ])
