"""The command line of the suite: which scenarios, how big, how often; the summary.

``python -m bench`` runs everything at full size (about 25 minutes on 2 cores) and
writes docs/benchmarks.md with plots in docs/img/. ``python -m bench --smoke`` runs
every scenario once with tiny sizes, checks that each one produced its rows, and
writes its report into the temporary directory instead: it proves the suite works,
not how fast anything is.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path

from bench import curves, e2e, report, scenarios
from bench.core import Context, Table, Target, number, print_table
from bench.infra import (REPO, BenchError, DelayServer, Machine, Nginx, describe_machine,
                         service_up)

SCENARIOS: dict[str, Callable[[Context], Table]] = {
    "http": scenarios.run_http,
    "skew": scenarios.run_skew,
    "scheduler": scenarios.run_scheduler,
    "memory": scenarios.run_memory,
    "soak": scenarios.run_soak,
    "e2e": e2e.run_e2e,
    "concurrency": curves.run_concurrency,
    "workers": curves.run_workers,
}
ALIASES = {"curves": ["concurrency", "workers"], "all": list(SCENARIOS)}
NEEDS_NGINX = {"http", "e2e", "workers"}
NEEDS_DELAY = {"skew", "concurrency"}
NEEDS_BROKERS = {"e2e", "workers"}

#: (full size, smoke size) of every size option.
SIZES = {
    "repeat": (5, 1),
    "curve_repeat": (2, 1),
    "workers_repeat": (1, 1),
    "requests": (20_000, 300),
    "concurrency": (50, 50),
    "skew_requests": (2_000, 300),
    "skew_concurrency": (100, 100),
    "sched_tasks": (200_000, 5_000),
    "sched_concurrency": (100, 100),
    "idle_tasks": (10_000, 1_000),
    "soak_tasks": (1_000_000, 20_000),
    "soak_seconds": (120.0, 60.0),
    "e2e_jobs": (5_000, 200),
    "e2e_concurrency": (100, 100),
    "curve_jobs": (5_000, 200),
    "curve_concurrency": ("1,10,50,100,250,500,1000", "1,10,100"),
    "curve_workers": ("1,2,3,4", "1,2"),
}

TARGETS = [
    Target("async_consumer fast / aiohttp (req/s)", "http", "ac-fast", "rate", ">=", 1.0,
           "aiohttp"),
    Target("async_consumer fast / seed model (req/s)", "http", "ac-fast", "rate", ">=", 40.0,
           "seed-model"),
    Target("sliding / ideal (seconds)", "skew", "sliding", "wall", "<=", 1.2, "ideal"),
    Target("consumer / raw Pool (no-op tasks/s)", "scheduler", "consumer", "rate", ">=", 0.8,
           "raw"),
    Target("memory per idle in-flight task", "memory", "idle", "kib", "<=", 12.0,
           unit=" KiB"),
    Target("async_consumer redis / Dramatiq redis (jobs/s)", "e2e", "ac-redis", "rate",
           ">=", 3.0, "dramatiq-redis"),
    Target("async_consumer rabbitmq / Dramatiq rabbitmq (jobs/s)", "e2e", "ac-rabbitmq",
           "rate", ">=", 3.0, "dramatiq-rabbitmq"),
    Target("async_consumer sqlite / Dramatiq redis (jobs/s)", "e2e", "ac-sqlite", "rate",
           ">=", 1.0, "dramatiq-redis"),
]


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench", description=__doc__.splitlines()[0],
        epilog="Scenarios: " + ", ".join(SCENARIOS) + " (curves = concurrency,workers).")
    parser.add_argument("--only", default="all",
                        help="comma-separated scenarios to run (default: all)")
    parser.add_argument("--smoke", action="store_true",
                        help="tiny sizes, one repetition, check every scenario completes")
    for name, (full, small) in SIZES.items():
        kind = type(full)
        parser.add_argument(f"--{name.replace('_', '-')}", type=kind, default=None,
                            help=f"default {full} (smoke: {small})")
    parser.add_argument("--equal-sizes", action="store_true",
                        help="every HTTP variant runs --requests (by default the slowest "
                        "run a share of them)")
    parser.add_argument("--e2e-fsync-row", action=argparse.BooleanOptionalAction,
                        default=False, help="also run async_consumer sqlite with results "
                        "fsync on, its default setting (default: no)")
    parser.add_argument("--out", type=Path, default=None,
                        help="the Markdown report (default docs/benchmarks.md; smoke: in "
                        "the temporary directory)")
    parser.add_argument("--keep-tmp", action="store_true",
                        help="keep the temporary directory (logs, configs) for a look")
    args = parser.parse_args(argv)

    for name, (full, small) in SIZES.items():
        if getattr(args, name) is None:
            setattr(args, name, small if args.smoke else full)
    args.curve_concurrency = [int(x) for x in str(args.curve_concurrency).split(",")]
    args.curve_workers = [int(x) for x in str(args.curve_workers).split(",")]

    selected: list[str] = []
    for word in args.only.split(","):
        word = word.strip()
        if word in ALIASES:
            selected += ALIASES[word]
        elif word in SCENARIOS:
            selected.append(word)
        else:
            parser.error(f"unknown scenario {word!r}; choose from {', '.join(SCENARIOS)}")
    args.selected = [name for name in SCENARIOS if name in selected]
    return args


def main(argv: list[str] | None = None) -> int:
    arguments = sys.argv[1:] if argv is None else argv
    options = parse_args(arguments)
    signal.signal(signal.SIGTERM, _stop_on_sigterm)
    command = " ".join(["python -m bench", *arguments])
    started = time.monotonic()
    tmp = Path(tempfile.mkdtemp(prefix="async-consumer-bench-"))
    print(f"benchmark run: {', '.join(options.selected)}; scratch directory {tmp}", flush=True)

    nginx, delay = Nginx(tmp), DelayServer(tmp)
    tables: list[Table] = []
    problems: list[str] = []
    machine: Machine | None = None
    try:
        wanted = set(options.selected)
        if wanted & NEEDS_BROKERS:
            for name, port in (("Redis", 6379), ("RabbitMQ", 5672)):
                if not service_up(port):
                    raise BenchError(f"{name} is not listening on 127.0.0.1:{port}")
        if wanted & NEEDS_NGINX:
            nginx.start()
            print(f"nginx: {nginx.url} (pid {nginx.process.pid if nginx.process else '?'})")
        if wanted & NEEDS_DELAY:
            delay.start()
            print(f"delay server: {delay.base_url} (pid "
                  f"{delay.process.pid if delay.process else '?'})")
        machine = describe_machine(nginx if nginx.process else None)
        context = Context(options, tmp, uuid.uuid4().hex[:8], nginx.url, delay.base_url)

        for name in options.selected:
            print(f"\n### {name}", flush=True)
            scenario_started = time.monotonic()
            try:
                table = SCENARIOS[name](context)
            except BenchError as error:
                problems.append(f"{name}: {error}")
                print(f"  {name} FAILED: {error}", flush=True)
                continue
            tables.append(table)
            table.info.append(f"({name} took {(time.monotonic() - scenario_started) / 60:.1f} "
                              "min)")
            print_table(table)
            problems += table.failures()
            if not any(series.samples for series in table.series):
                problems.append(f"{name}: no row has a result")
    except BenchError as error:
        problems.append(str(error))
    finally:
        delay.stop()
        nginx.stop()

    print_summary(tables, problems, time.monotonic() - started)
    if tables:
        out = options.out or (tmp / "benchmarks.md" if options.smoke
                              else REPO / "docs" / "benchmarks.md")
        images = out.parent / "img"
        plots = report.write_plots(tables, images)
        report.write_markdown(out, tables, TARGETS, machine or describe_machine(None),
                              command, options.repeat, plots)
        print(f"report: {out}; plots: {', '.join(str(p) for p in plots.values()) or 'none'}")
        if options.smoke and not out.read_text().count("\n| "):
            problems.append("the report has no table")

    if options.keep_tmp or problems:
        print(f"logs and configs kept in {tmp}")
    else:
        shutil.rmtree(tmp, ignore_errors=True)
        if options.smoke and options.out is None:
            print("(the smoke report went with the scratch directory; --keep-tmp keeps it)")
    return 1 if problems else 0


def _stop_on_sigterm(signum: int, frame: object) -> None:
    """SIGTERM unwinds like Ctrl-C, so that nginx and the delay server are stopped."""
    raise KeyboardInterrupt(f"signal {signum}")


def print_summary(tables: list[Table], problems: list[str], seconds: float) -> None:
    by_key = {t.key: t for t in tables}
    print("\n== targets (ratios of medians)")
    for target in TARGETS:
        if target.table not in by_key:
            continue
        ratio, verdict = target.verdict(by_key)
        bound = number(target.bound, 2)
        print(f"  {verdict:4}  {target.name}: {number(ratio, 2)}{target.unit} "
              f"(goal {target.goal} {bound}{target.unit})")
    if problems:
        print("\n== problems")
        for problem in problems:
            print(f"  {problem}")
    print(f"\nfinished in {seconds / 60:.1f} min on {os.cpu_count()} cores", flush=True)
