"""Flask integration: enqueue from views, and run the worker inside the app's context.

The web process stays an ordinary synchronous Flask application; nothing here
patches it::

    from async_consumer.flask import AsyncConsumerExtension

    jobs = AsyncConsumerExtension()

    def create_app():
        app = Flask(__name__)
        app.config["ASYNC_CONSUMER_CONFIG"] = "worker.ini"
        jobs.init_app(app)
        return app

    @app.post("/orders")
    def order():
        jobs.enqueue({"url": "https://hooks.example/order", "json": request.json})

The worker is a separate process that must be monkey-patched before the app is
imported, so it is started as ``python -m async_consumer.flask run --app module:app``
(or ``flask async-consumer run``, which re-executes itself that way). Its tasks, its
transformer and the provider's result handling run inside ``app.app_context()``.
"""

from __future__ import annotations

import argparse
import atexit
import os
import sys
import threading
from collections.abc import Iterable
from typing import Any

from .config import Config, load_config
from .jobs import HttpJob
from .producer import Producer
from .promise import Promise
from .provider import Provider

#: The key under ``app.extensions`` and the app.config key naming the worker's INI.
EXTENSION_KEY = "async_consumer"
CONFIG_KEY = "ASYNC_CONSUMER_CONFIG"


class _AppState:
    """One producer per application and process, made on first use."""

    def __init__(self, config: Config | str | os.PathLike[str]) -> None:
        self.config = config
        self.lock = threading.Lock()
        self.producer: Producer | None = None
        self.pid = 0

    def get(self) -> Producer:
        with self.lock:
            # A producer made before a fork (Gunicorn's --preload) holds a connection
            # or a file that the parent still uses: the child opens its own.
            if self.producer is None or self.pid != os.getpid():
                self.producer = Producer(self.config)
                self.pid = os.getpid()
            return self.producer

    def close(self) -> None:
        with self.lock:
            if self.producer is not None and self.pid == os.getpid():
                self.producer.close()
            self.producer = None


class AsyncConsumerExtension:
    """Gives a Flask application a shared producer and the ``async-consumer`` commands.

    Settings come from ``app.config``: ``ASYNC_CONSUMER_CONFIG`` is the path of the
    worker's INI file (or a loaded :class:`~async_consumer.config.Config`), so the
    application and its worker read the same queue settings. The producer is opened
    on the first ``enqueue`` of each process, shared by the app's threads, and
    closed when the process exits.
    """

    def __init__(self, app: Any = None) -> None:
        self.app = app
        if app is not None:
            self.init_app(app)

    def init_app(self, app: Any) -> None:
        if CONFIG_KEY not in app.config:
            raise RuntimeError(f"set app.config[{CONFIG_KEY!r}] to the worker's INI file "
                               "before init_app")
        state = _AppState(app.config[CONFIG_KEY])
        app.extensions[EXTENSION_KEY] = state
        atexit.register(state.close)
        app.cli.add_command(_command_group())

    def enqueue(self, jobs: dict[str, Any] | HttpJob | Iterable[dict[str, Any] | HttpJob],
                app: Any = None) -> int:
        """Check and store one job or many; returns how many were stored.

        A bad job raises :class:`~async_consumer.jobs.JobError` and nothing is stored.
        """
        batch = [jobs] if isinstance(jobs, (dict, HttpJob)) else list(jobs)
        return self.producer(app).enqueue(batch)

    def producer(self, app: Any = None) -> Producer:
        """The application's producer (the current app's unless ``app`` is given)."""
        return self._state(app).get()

    def close(self, app: Any = None) -> None:
        """Close the producer now; the next ``enqueue`` opens a new one."""
        self._state(app).close()

    def _state(self, app: Any) -> _AppState:
        if app is None:
            app = self.app
        if app is None:
            from flask import current_app

            app = current_app._get_current_object()  # type: ignore[attr-defined]
        try:
            return app.extensions[EXTENSION_KEY]
        except KeyError:
            raise RuntimeError(f"{app.name} has no AsyncConsumerExtension: call init_app(app)")


# -- the worker, inside the application's context ---------------------------------------

class AppContextProvider(Provider):
    """Runs a provider's work inside ``app.app_context()``.

    Transformers run in :meth:`get_batch`, tasks in their promise's ``run`` and result
    handling in :meth:`settle`; each pushes the context in its own greenlet, so
    ``current_app``, ``app.config`` and extensions such as a database session work
    there as they do in a view.
    """

    def __init__(self, app: Any, provider: Provider) -> None:
        self.app = app
        self.provider = provider

    def get(self) -> Promise | None:
        with self.app.app_context():
            promise = self.provider.get()
        return None if promise is None else self._in_context(promise)

    def get_batch(self, max_count: int) -> list[Promise]:
        with self.app.app_context():
            batch = self.provider.get_batch(max_count)
        return [self._in_context(promise) for promise in batch]

    def settle(self, promise: Promise) -> None:
        with self.app.app_context():
            self.provider.settle(promise)

    def has_pending_work(self) -> bool:
        return self.provider.has_pending_work()

    def seconds_until_ready(self) -> float | None:
        return self.provider.seconds_until_ready()

    def close(self) -> None:
        with self.app.app_context():
            self.provider.close()

    def describe(self) -> str:
        return f"{self.provider.describe()} in the context of {self.app.name}"

    def __getattr__(self, name: str) -> Any:
        # Counters and queue handles of the wrapped provider, for summaries.
        return getattr(self.provider, name)

    def _in_context(self, promise: Promise) -> Promise:
        run = promise.run
        app = self.app

        def run_in_context() -> None:
            with app.app_context():
                run()

        promise.run = run_in_context  # type: ignore[method-assign]
        return promise


def run_worker(app: Any, config: Config | str | os.PathLike[str] | None = None,
               until_empty: bool = False) -> int:
    """Run the worker of ``config`` (default: the app's) with the app's context.

    The process must already be patched: :func:`main` does that before it imports
    the application.
    """
    from loguru import logger

    from .logsetup import configure_logging
    from .runner import build_worker

    source = config if config is not None else app.config[CONFIG_KEY]
    loaded = source if isinstance(source, Config) else load_config(source)
    configure_logging(loaded.logging.level, loaded.logging.format,
                      None if loaded.logging.file is None else str(loaded.logging.file),
                      loaded.logging.enqueue)

    with app.app_context():
        worker = build_worker(loaded)
    worker.consumer.provider = AppContextProvider(app, worker.provider)
    logger.info("running the worker of {} inside {}", loaded.source, app.name)
    stats = worker.consumer.consume(until_empty=until_empty)
    print("done: " + " ".join(f"{key}={value}" for key, value in stats.summary().items()))
    return 0


def main(argv: list[str] | None = None) -> int:
    """``python -m async_consumer.flask run --app module:app``: patch, then import the app.

    The order matters: an application imports ``requests``, ``ssl`` or a database
    driver, and gevent must patch before any of them is imported.
    """
    from .errors import PatchError
    from .patching import patch_process

    try:
        patch_process()
    except PatchError as error:
        print(f"async-consumer: {error}", file=sys.stderr)
        return 2

    args = _parser().parse_args(argv)
    from flask.cli import ScriptInfo

    sys.path.insert(0, os.getcwd())
    app = ScriptInfo(app_import_path=args.app).load_app()
    return run_worker(app, args.config, until_empty=args.until_empty)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m async_consumer.flask",
        description="Run the async-consumer worker inside a Flask application's context.",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    run = commands.add_parser("run", help="consume jobs until stopped")
    run.add_argument("--app", default=None,
                     help="the application, as for flask --app (module:app or module)")
    run.add_argument("-c", "--config", default=None,
                     help="the worker's INI file (default: app.config['ASYNC_CONSUMER_CONFIG'])")
    run.add_argument("--until-empty", action="store_true",
                     help="exit once the queue is drained")
    return parser


def _command_group() -> Any:
    """``flask async-consumer run``: re-executes as ``python -m async_consumer.flask``.

    By the time the flask command runs a command, it has imported the application
    and everything the application imports; patching then would be too late. A
    fresh interpreter that patches first is the only order that works.
    """
    import click
    from flask.cli import ScriptInfo

    @click.group("async-consumer", help="The async-consumer worker of this application.")
    def group() -> None:
        pass

    @group.command("run", help="Run the worker, patched, inside the app's context.")
    @click.option("-c", "--config", default=None, help="the worker's INI file")
    @click.option("--until-empty", is_flag=True, help="exit once the queue is drained")
    @click.pass_obj
    def run(info: ScriptInfo, config: str | None, until_empty: bool) -> None:
        argv = [sys.executable, "-m", "async_consumer.flask", "run"]
        if info is not None and info.app_import_path:
            argv += ["--app", info.app_import_path]
        if config:
            argv += ["--config", config]
        if until_empty:
            argv.append("--until-empty")
        sys.stdout.flush()
        sys.stderr.flush()
        os.execv(sys.executable, argv)

    return group


if __name__ == "__main__":
    sys.exit(main())
