"""The subcommands of ``async-consumer``; imported only after monkey-patching."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from loguru import logger

from . import __version__
from .cli import EXIT_CONFIG, EXIT_FAILURE, EXIT_FATAL_TASK, EXIT_OK
from .config import Config, load_config
from .errors import ConfigError, FatalTaskError
from .jobs import HttpJob, JobError, parse_job_lines
from .logsetup import configure_logging
from .producer import Producer, open_publisher
from .runner import build_worker, check_claim_time, check_lease_time
from .services import start_services
from .delivery import DeliveryCounts
from .sqlite_provider import SQLiteProvider
from .errors import QueueError

#: Marks a line that was not UTF-8, so that it is reported with its number.
_UNDECODABLE = "\x00undecodable:"
#: How many bad job lines are listed before the rest are only counted.
MAX_REPORTED_BAD_LINES = 20


def run_command(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        config = load_config(args.config)
        if args.command != "check":
            configure_logging(config.logging.level, config.logging.format,
                              _str_or_none(config.logging.file), config.logging.enqueue)
        return args.handler(args, config)
    except ConfigError as error:
        print(f"async-consumer: configuration error: {error}", file=sys.stderr)
        return EXIT_CONFIG
    except QueueError as error:
        print(f"async-consumer: the queue is not usable: {error}", file=sys.stderr)
        return EXIT_FAILURE
    except Exception as error:
        if not _is_broker_client_error(error):
            raise
        print(f"async-consumer: the broker refused or failed: {type(error).__name__}: "
              f"{error}", file=sys.stderr)
        return EXIT_FAILURE


def _is_broker_client_error(error: Exception) -> bool:
    """An error raised by the redis or pika client: one line for the operator, not a
    traceback."""
    return type(error).__module__.split(".")[0] in ("redis", "pika")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="async-consumer",
        description="Run HTTP jobs from a durable queue with gevent.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    enqueue = _command(commands, "enqueue", "store HTTP jobs (JSON lines) in the queue",
                       _enqueue)
    enqueue.add_argument("jobs", nargs="?", default="-",
                         help="a JSON-lines file, or - for standard input (default)")

    run = _command(commands, "run", "consume jobs until stopped", _run)
    run.add_argument("--until-empty", action="store_true",
                     help="exit 0 once the queue is drained and print a summary")
    run.add_argument("--no-progress", action="store_true",
                     help="no progress bar, even on a terminal")

    _command(commands, "check", "validate the file, open the provider, print the "
             "settings in force", _check)

    dead = commands.add_parser("dead", help="list or requeue dead-lettered jobs",
                               description="list or requeue dead-lettered jobs")
    actions = dead.add_subparsers(dest="action", required=True, metavar="ACTION")
    listing = _command(actions, "list", "print dead-lettered jobs as JSON lines", _dead)
    listing.add_argument("--limit", type=int, default=100, help="how many to list")
    requeue = _command(actions, "requeue", "give dead-lettered jobs another round", _dead)
    requeue.add_argument("refs", nargs="*", help="the refs (from dead list) to requeue")
    requeue.add_argument("--all", action="store_true", help="requeue every dead job")
    return parser


def _command(commands: Any, name: str, summary: str, handler: Any) -> argparse.ArgumentParser:
    command = commands.add_parser(name, help=summary, description=summary)
    command.add_argument("-c", "--config", required=True, metavar="INI",
                         help="the worker's INI file")
    command.set_defaults(handler=handler)
    return command


# -- enqueue -----------------------------------------------------------------------------

def _enqueue(args: argparse.Namespace, config: Config) -> int:
    try:
        lines = _read_lines(args.jobs)
    except OSError as error:
        print(f"async-consumer: cannot read jobs from {args.jobs}: {error}", file=sys.stderr)
        return EXIT_FAILURE

    jobs, problems = _check_job_lines(lines)
    if problems:
        for problem in problems[:MAX_REPORTED_BAD_LINES]:
            print(f"async-consumer: {args.jobs}: {problem}", file=sys.stderr)
        if len(problems) > MAX_REPORTED_BAD_LINES:
            print(f"async-consumer: ... and {len(problems) - MAX_REPORTED_BAD_LINES} more "
                  "bad line(s)", file=sys.stderr)
        print(f"async-consumer: nothing was enqueued: {len(problems)} bad line(s) out of "
              f"{len(jobs) + len(problems)}; fix them and run again", file=sys.stderr)
        return EXIT_FAILURE

    with Producer(config) as producer:
        stored = producer.enqueue(jobs)
    print(f"accepted {stored} job(s) into {_destination(config)}")
    return EXIT_OK


def _destination(config: Config) -> str:
    if config.provider.type == "sqlite":
        return str(config.provider.path)
    return f"{config.provider.type} queue {config.provider.queue!r}"


def _read_lines(source: str) -> list[str]:
    """Lines split on newlines only: JSON strings may hold U+2028 and friends."""
    if source == "-":
        data = sys.stdin.buffer.read()
    else:
        with open(source, "rb") as handle:
            data = handle.read()

    lines = []
    for number, raw in enumerate(data.split(b"\n"), start=1):
        if number == 1 and raw.startswith(b"\xef\xbb\xbf"):
            raw = raw[3:]
        try:
            lines.append(raw.decode("utf-8").rstrip("\r"))
        except UnicodeDecodeError as error:
            lines.append(_UNDECODABLE + str(error))
    if lines and not lines[-1]:
        lines.pop()
    return lines


def _check_job_lines(lines: list[str]) -> tuple[list[HttpJob], list[str]]:
    """Every line is checked, so that one run reports all the bad ones."""
    jobs: list[HttpJob] = []
    problems: list[str] = []
    for number, line in enumerate(lines, start=1):
        if line.startswith(_UNDECODABLE):
            problems.append(f"line {number}: not UTF-8 text ({line[len(_UNDECODABLE):]})")
            continue
        try:
            jobs.extend(parse_job_lines([line]))
        except JobError as error:
            problems.append(f"line {number}: {error.reason}")
    return jobs, problems


# -- run ---------------------------------------------------------------------------------

def _run(args: argparse.Namespace, config: Config) -> int:
    worker = build_worker(config)
    logger.info("settings in force: {}", json.dumps(config.describe(), default=str))
    services = start_services(config, worker, args.config)
    bar = _progress_bar(worker.provider, args)
    if bar is not None:
        bar.start()
    try:
        stats = worker.consumer.consume(until_empty=args.until_empty)
    except FatalTaskError as error:
        logger.error("stopped by a fatal task error: {}", error)
        print(f"async-consumer: stopped: {error}", file=sys.stderr)
        return EXIT_FATAL_TASK
    finally:
        if bar is not None:
            bar.stop()
        services.stop()

    print(_summary_line(worker.provider, stats.summary(), config))
    return EXIT_OK


def _progress_bar(provider: Any, args: argparse.Namespace) -> Any:
    if args.no_progress or not args.until_empty or not sys.stderr.isatty():
        return None
    if not isinstance(provider, SQLiteProvider):
        return None

    from .progress import ProgressBar

    def read() -> tuple[int, int]:
        done = provider.counts.finished
        try:
            counts = provider.queue.counts()
        except QueueError:
            return done, 0
        waiting = counts["ready"] + counts["delayed"] + counts["leased"]
        return done, max(waiting - provider.unflushed, 0)

    return ProgressBar(read)


def _summary_line(provider: Any, summary: dict[str, Any], config: Config) -> str:
    seconds = summary["seconds"]
    counts = getattr(provider, "counts", None)
    if isinstance(counts, DeliveryCounts):
        done = counts.ok + counts.failed
        rate = done / seconds if seconds else 0.0
        return (
            f"done: {done} job(s) in {seconds:.2f}s ({rate:.1f} jobs/s): {counts.ok} ok, "
            f"{counts.failed} failed ({counts.dead_lettered} dead-lettered), "
            f"{counts.retried} retried; latency p50 {_milliseconds(summary['p50_ms'])}, "
            f"p95 {_milliseconds(summary['p95_ms'])}; results in {config.results.path}"
        )
    return "done: " + " ".join(f"{key}={value}" for key, value in summary.items())


# -- check and dead ----------------------------------------------------------------------

def _check(args: argparse.Namespace, config: Config) -> int:
    check_lease_time(config)
    check_claim_time(config)
    described = config.describe()
    if config.provider.type in ("sqlite", "rabbitmq", "redis"):
        with open_publisher(config) as publisher:
            described["queue"] = publisher.counts()
    else:
        from .runner import build_provider

        provider = build_provider(config)
        described["provider_connected"] = provider.describe()
        provider.close()

    print(json.dumps(described, indent=2, default=str))
    print(f"{args.config}: OK", file=sys.stderr)
    return EXIT_OK


def _dead(args: argparse.Namespace, config: Config) -> int:
    with open_publisher(config) as publisher:
        if args.action == "list":
            for entry in publisher.list_dead(args.limit):
                print(json.dumps(entry))
            return EXIT_OK

        if not args.refs and not args.all:
            print("async-consumer: dead requeue needs refs (from dead list) or --all",
                  file=sys.stderr)
            return EXIT_FAILURE
        try:
            moved = publisher.requeue_dead(None if args.all else args.refs)
        except JobError as error:
            print(f"async-consumer: {error}", file=sys.stderr)
            return EXIT_FAILURE
        print(f"requeued {moved} job(s)")
        return EXIT_OK


def _milliseconds(value: Any) -> str:
    return "n/a" if value is None else f"{value} ms"


def _str_or_none(value: Any) -> str | None:
    return None if value is None else str(value)
