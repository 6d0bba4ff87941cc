"""Run the main job end to end on this machine, with nothing to set up.

It starts a local HTTP target on 127.0.0.1, writes a worker INI and a file of HTTP
jobs under ``var/demo/``, then uses the real command line to enqueue the jobs and
run them until the queue is empty. The job mix has fast and slow answers, answers
that fail once and then succeed, permanent failures and a few requests that never
get an answer, so the summary shows retries and dead letters as well as successes.

Usage: ``python examples/demo.py [--jobs N] [--concurrency N]``
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path

from async_consumer.devserver import start_process

DEMO_DIR = Path("var/demo")
TARGET_START_SECONDS = 15.0

INI_TEMPLATE = """\
[consumer]
concurrency = {concurrency}
max_batch_collect_time = 0.05
task_timeout = 10
shutdown_timeout = 10

[provider]
type = sqlite
path = queue.sqlite3

[http]
connect_timeout = 2
read_timeout = 5

[retry]
max_attempts = 3
backoff_base = 0.2
backoff_max = 1

[results]
path = results.jsonl

[logging]
level = WARNING
file = worker.log
"""


def make_jobs(base_url: str, count: int) -> list[dict]:
    """A reproducible mix of the answers a webhook sender meets."""
    chooser = random.Random(42)
    jobs = []
    for index in range(count):
        roll = chooser.random()
        job: dict = {"id": f"demo-{index}"}
        if roll < 0.70:
            job["url"] = f"{base_url}/ok"
        elif roll < 0.85:
            job["url"] = f"{base_url}/delay/{chooser.randrange(50, 300)}"
        elif roll < 0.90:
            job.update(method="POST", url=f"{base_url}/flaky/{index}/1",
                       json={"event": "order.created", "n": index})
        elif roll < 0.95:
            job["url"] = f"{base_url}/status/404"
        elif roll < 0.99:
            job.update(url=f"{base_url}/status/503", max_attempts=2)
        else:
            job.update(url=f"{base_url}/hang", timeout=0.5, max_attempts=2)
        jobs.append(job)
    return jobs


def command(*args: str) -> int:
    shown = " ".join(["async-consumer", *args])
    print(f"\n$ {shown}", flush=True)
    return subprocess.call([sys.executable, "-m", "async_consumer", *args], cwd=DEMO_DIR)


def main() -> int:
    parser = argparse.ArgumentParser(description="Run the main job against a local target.")
    parser.add_argument("--jobs", type=int, default=2000)
    parser.add_argument("--concurrency", type=int, default=100)
    args = parser.parse_args()

    shutil.rmtree(DEMO_DIR, ignore_errors=True)
    DEMO_DIR.mkdir(parents=True)
    try:
        target, base_url = start_process(DEMO_DIR.resolve(), TARGET_START_SECONDS)
    except RuntimeError as error:
        raise SystemExit(f"the demo target did not start: {error}")
    print(f"local target: {base_url} (pid {target.pid})")
    try:
        (DEMO_DIR / "worker.ini").write_text(INI_TEMPLATE.format(concurrency=args.concurrency))
        lines = [json.dumps(job) for job in make_jobs(base_url, args.jobs)]
        (DEMO_DIR / "jobs.jsonl").write_text("\n".join(lines) + "\n")

        status = command("enqueue", "-c", "worker.ini", "jobs.jsonl")
        status = status or command("run", "-c", "worker.ini", "--until-empty")
        status = status or command("dead", "list", "-c", "worker.ini", "--limit", "3")
    finally:
        target.terminate()
        target.wait(timeout=10)

    results = [json.loads(line) for line in (DEMO_DIR / "results.jsonl").read_text().splitlines()]
    tally = Counter(result["status"] for result in results)
    print(f"\n{len(results)} result lines in {DEMO_DIR / 'results.jsonl'}: {dict(tally)}")
    print(f"warnings (retries, timeouts, dead letters) are in {DEMO_DIR / 'worker.log'}")
    return status


if __name__ == "__main__":
    sys.exit(main())
