"""The task body both queue peers run: one GET on a shared session, one result line.

Dramatiq's actor and Celery's task call :func:`fetch_and_record`, so the two peers
do exactly the same work per job and differ only in their framework.
"""

from __future__ import annotations

import json
import os
import time

import requests
from requests.adapters import HTTPAdapter

POOL_SIZE = int(os.environ.get("BENCH_POOL_SIZE", "100"))
RESULTS = os.environ.get("BENCH_RESULTS", "results.jsonl")

SESSION = requests.Session()
SESSION.mount("http://", HTTPAdapter(pool_connections=1, pool_maxsize=POOL_SIZE))
_results: dict[str, int] = {}


def record(line: dict) -> None:
    """Append one result line; the file is opened once per worker process."""
    if "fd" not in _results:
        _results["fd"] = os.open(RESULTS, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    os.write(_results["fd"], (json.dumps(line, separators=(",", ":")) + "\n").encode())


def fetch_and_record(job_id: str, url: str) -> None:
    started = time.perf_counter()
    response = SESSION.get(url, timeout=(5, 30))
    response.raise_for_status()
    record({"id": job_id, "status": "ok", "status_code": response.status_code,
            "elapsed_ms": round((time.perf_counter() - started) * 1000, 1),
            "finished_at": time.time()})
