"""Every INI setting the daemon understands, defined once.

The loader (:mod:`async_consumer.config`) validates a file against this registry, and the
INI reference in the docs is generated from it, so a key, its default, its allowed values
and its description can never drift apart.

This module imports only the standard library: the CLI loads it before gevent
monkey-patches the process, and importing gevent, requests or loguru first would leave
unpatched sockets and locks behind.
"""

from __future__ import annotations

import difflib
import importlib
import importlib.metadata
import math
import re
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any


def _package_version() -> str:
    """The installed version, for the default User-Agent; a source checkout has none."""
    try:
        return importlib.metadata.version("async_consumer")
    except importlib.metadata.PackageNotFoundError:
        return "0+unknown"


# [consumer]
DEFAULT_CONCURRENCY = 10
MIN_CONCURRENCY = 1
MAX_CONCURRENCY = 100_000
DEFAULT_MAX_BATCH_COLLECT_TIME_SECONDS = 0.1
DEFAULT_TASK_TIMEOUT_SECONDS = 60.0
DEFAULT_SHUTDOWN_TIMEOUT_SECONDS = 30.0
MODE_SLIDING = "sliding"
MODE_BATCH = "batch"
MODES = (MODE_SLIDING, MODE_BATCH)
DEFAULT_MODE = MODE_SLIDING
DEFAULT_IDLE_POLL_MAX_SECONDS = 1.0
DEFAULT_STATS_INTERVAL_SECONDS = 10.0

# [provider]
PROVIDER_SQLITE = "sqlite"
PROVIDER_RABBITMQ = "rabbitmq"
PROVIDER_REDIS = "redis"
BUILTIN_PROVIDERS = (PROVIDER_SQLITE, PROVIDER_RABBITMQ, PROVIDER_REDIS)
BROKERS = (PROVIDER_RABBITMQ, PROVIDER_REDIS)
DEFAULT_PROVIDER_TYPE = PROVIDER_SQLITE
DEFAULT_SQLITE_PATH = "./var/queue.sqlite3"
DEFAULT_LEASE_TIME_SECONDS = 300.0
DEFAULT_BROKER_URLS = {
    PROVIDER_RABBITMQ: "amqp://guest:guest@127.0.0.1:5672/%2F",
    PROVIDER_REDIS: "redis://127.0.0.1:6379/0",
}
DEFAULT_QUEUE_NAME = "async_consumer"
PREFETCH_FOLLOWS_CONCURRENCY = 0
DEFAULT_HEARTBEAT_SECONDS = 30.0
DEFAULT_CLAIM_IDLE_TIME_SECONDS = 300.0
DEFAULT_POLL_TIMEOUT_SECONDS = 2.0
DEFAULT_SOCKET_TIMEOUT_SECONDS = 10.0
DEFAULT_RECONNECT_MAX_SECONDS = 30.0

# [http]
DEFAULT_CONNECT_TIMEOUT_SECONDS = 5.0
DEFAULT_READ_TIMEOUT_SECONDS = 30.0
DEFAULT_VERIFY = True
POOL_SIZE_FOLLOWS_CONCURRENCY = 0
DEFAULT_POOL_SIZE = POOL_SIZE_FOLLOWS_CONCURRENCY
DEFAULT_RAISE_FOR_STATUS = True
DEFAULT_MAX_BODY_BYTES = 10 * 1024 * 1024
DEFAULT_USER_AGENT = f"async-consumer/{_package_version()}"
DEFAULT_ALLOW_NO_TIMEOUT = False
HTTP_TRANSPORTS = ("auto", "fast", "requests")
DEFAULT_HTTP_TRANSPORT = "auto"

# [retry]
DEFAULT_MAX_ATTEMPTS = 5
MAX_MAX_ATTEMPTS = 1000
DEFAULT_BACKOFF_BASE_SECONDS = 1.0
DEFAULT_BACKOFF_MAX_SECONDS = 300.0
DEFAULT_JITTER_FRACTION = 0.5

# [results]
DEFAULT_RESULTS_PATH = "./var/results.jsonl"
DEFAULT_RESULTS_FSYNC = True

# [logging]
LOG_LEVELS = ("TRACE", "DEBUG", "INFO", "SUCCESS", "WARNING", "ERROR", "CRITICAL")
DEFAULT_LOG_LEVEL = "INFO"
LOG_FORMATS = ("text", "json")
DEFAULT_LOG_FORMAT = "text"
DEFAULT_LOG_FILE = None
DEFAULT_LOG_ENQUEUE = False

# [metrics]
DEFAULT_METRICS_ENABLED = False
DEFAULT_METRICS_HOST = "127.0.0.1"
DEFAULT_METRICS_PORT = 9464
DEFAULT_METRICS_TOP_HOSTS = 20
MAX_METRICS_TOP_HOSTS = 1000

# [logging], the blocked-hub report
DEFAULT_BLOCK_REPORT_SECONDS = 0.0

SECONDS = "seconds"
FRACTION = "fraction"

TRUE_WORDS = ("true", "yes", "on", "1")
FALSE_WORDS = ("false", "no", "off", "0")
NO_TIMEOUT_WORD = "none"

SECTION_DESCRIPTIONS = {
    "consumer": "How many tasks run at once and how the consumer paces itself.",
    "provider": "Where jobs come from: the built-in sqlite queue or a provider class.",
    "http": "The shared HTTP session that tasks use.",
    "retry": "How failed jobs are retried; a job's own max_attempts wins.",
    "results": "The append-only file that records every finished job.",
    "logging": "Where and how the daemon logs.",
    "metrics": "An optional HTTP endpoint for Prometheus metrics and health checks.",
}

Parser = Callable[[str, Path], Any]
Check = Callable[[Any], str | None]

_IMPORT_PATH = re.compile(r"^[A-Za-z_]\w*(\.[A-Za-z_]\w*)*:[A-Za-z_]\w*(\.[A-Za-z_]\w*)*$")


@dataclass(frozen=True)
class Setting:
    """One INI key: how to read it, what it defaults to and how to explain it.

    ``parse`` turns the text into a value (``base_dir`` anchors relative paths) and
    ``check`` judges the value; both report a problem as a short reason (a ``ValueError``
    or a returned string) that the loader combines with ``expected`` into a message that
    lets an operator fix the file without reading the docs.
    """

    section: str
    key: str
    parse: Parser
    default: Any
    expected: str
    description: str
    check: Check | None = None
    unit: str | None = None
    #: The provider types a ``[provider]`` key belongs to; ``None``: every section key.
    providers: tuple[str, ...] | None = None
    #: How the default is read when the file does not set the key (default: ``parse``);
    #: the default files' directory is created by the component that uses it.
    parse_default: Parser | None = None

    def applies_to(self, provider_type: str) -> bool:
        return self.providers is None or provider_type in self.providers

    @property
    def default_text(self) -> str:
        """The default spelled as it would be written in the INI file."""
        return format_ini_value(self.default)

    def validate(self, text: str, base_dir: Path, given: bool = True) -> Any:
        """Parse and check ``text``; raise ``ValueError(reason)`` when it is unusable."""
        parse = self.parse if given or self.parse_default is None else self.parse_default
        value = parse(text, base_dir)

        reason = self.check(value) if self.check else None
        if reason:
            raise ValueError(reason)
        return value


def format_ini_value(value: Any) -> str:
    """Spell a Python value the way the INI file writes it, for defaults in the docs."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def suggest(word: str, choices: Sequence[str]) -> str | None:
    """The closest known spelling of ``word``, so typos are fixed without the docs."""
    matches = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)
    return matches[0] if matches else None


def with_suggestion(reason: str, word: str, choices: Sequence[str]) -> str:
    """Append a "did you mean" hint to ``reason`` when one is close enough."""
    match = suggest(word, choices)
    return f"{reason} (did you mean {match!r}?)" if match else reason


def parse_int(text: str, base_dir: Path) -> int:
    """A whole number; ``10.0`` is refused so that a fraction is never truncated."""
    try:
        if "_" in text:
            raise ValueError
        return int(text)
    except ValueError:
        raise ValueError("not a whole number") from None


def parse_float(text: str, base_dir: Path) -> float:
    """A finite number; nan and inf would defeat every comparison made with it."""
    try:
        value = float(text)
    except ValueError:
        raise ValueError("not a number") from None

    if not math.isfinite(value):
        raise ValueError("not a finite number")
    return value


def parse_bool(text: str, base_dir: Path) -> bool:
    """The usual INI spellings of yes and no, in any case."""
    word = text.strip().lower()
    if word in TRUE_WORDS:
        return True
    if word in FALSE_WORDS:
        return False
    raise ValueError("not a boolean")


def parse_optional_seconds(text: str, base_dir: Path) -> float | None:
    """A timeout that may be ``none``; the loader decides whether "no timeout" is allowed."""
    if text.strip().lower() == NO_TIMEOUT_WORD:
        return None
    return parse_float(text, base_dir)


def parse_string(text: str, base_dir: Path) -> str:
    """A free-form string, taken as written."""
    return text


def parse_path(text: str, base_dir: Path) -> Path:
    """A file path; a relative one starts at the INI file's directory, not the cwd.

    The daemon is often started from a unit file whose working directory nobody chose,
    so anchoring paths to the file that names them is the only predictable choice.
    """
    if not text.strip():
        raise ValueError("empty path")
    return base_dir / Path(text).expanduser()


def parse_file_path(text: str, base_dir: Path) -> Path:
    """A file to create or open, whose directory must already exist.

    Directories are not created on the fly: a typo in a path should be an error at
    start, not a tree of new directories somewhere.
    """
    path = parse_path(text, base_dir)
    if not path.parent.is_dir():
        raise ValueError(f"directory {str(path.parent)!r} does not exist")
    if path.is_dir():
        raise ValueError("is a directory, not a file")
    return path


def parse_optional_path(text: str, base_dir: Path) -> Path | None:
    """A path where empty means "none" (for example: log to stderr)."""
    if not text.strip():
        return None
    return parse_file_path(text, base_dir)


def parse_verify(text: str, base_dir: Path) -> bool | Path:
    """TLS verification on/off, or the CA bundle to verify against.

    A missing bundle is caught here because requests would otherwise fail on the first
    HTTPS call, long after startup, once per task.
    """
    try:
        return parse_bool(text, base_dir)
    except ValueError:
        pass

    path = parse_path(text, base_dir)
    if not path.exists():
        raise ValueError("not a boolean and no CA bundle file exists at that path")
    if not path.is_file():
        raise ValueError("the CA bundle path is not a file")
    return path


def choice(choices: Sequence[str], noun: str, *, upper: bool = False) -> Parser:
    """A parser accepting one of ``choices``; ``upper`` makes it case-insensitive."""

    def parse(text: str, base_dir: Path) -> str:
        word = text.strip().upper() if upper else text.strip()
        if word in choices:
            return word
        raise ValueError(with_suggestion(f"unknown {noun}", word, choices))

    return parse


def parse_provider_type(text: str, base_dir: Path) -> str:
    """A built-in type or ``package.module:Class``; the import is tried by the loader."""
    word = text.strip()
    if word in BUILTIN_PROVIDERS or _IMPORT_PATH.match(word):
        return word

    if ":" not in word:
        raise ValueError(with_suggestion("unknown provider", word, list(BUILTIN_PROVIDERS)))
    raise ValueError("not an import path")


def import_provider_class(spec: str) -> Any:
    """Import ``package.module:Class`` and return the class.

    The import happens here, on demand, so that loading this module never imports a
    provider (and whatever it imports) before gevent has patched the process. Raises
    ``ImportError``, ``AttributeError`` or ``TypeError`` (not callable) for the caller
    to report.
    """
    module_name, _, attribute_path = spec.partition(":")
    target: Any = importlib.import_module(module_name)

    for attribute in attribute_path.split("."):
        target = getattr(target, attribute)

    if not callable(target):
        raise TypeError(f"{spec} is a {type(target).__name__}, not a class")
    return target


def in_range(low: float, high: float) -> Check:
    """A check for ``low <= value <= high``."""

    def check(value: float) -> str | None:
        return None if low <= value <= high else "out of range"

    return check


def at_least(low: float) -> Check:
    """A check for ``value >= low``; the message reads naturally for zero."""

    def check(value: float | None) -> str | None:
        if value is None or value >= low:
            return None
        return "must not be negative" if low == 0 else f"must be at least {low}"

    return check


def greater_than(low: float) -> Check:
    """A check for ``value > low``."""

    def check(value: float) -> str | None:
        return None if value > low else f"must be greater than {low:g}"

    return check


def not_empty(value: str) -> str | None:
    """A check refusing an empty string."""
    return None if value.strip() else "must not be empty"


#: Longest queue name: RabbitMQ allows 255 bytes, and the longest derived name adds
#: ``.retry.3600000`` for the delay queue of one hour.
MAX_QUEUE_NAME_BYTES = 255 - len(".retry.3600000")


def queue_name_problem(value: str) -> str | None:
    """A queue name must be non-empty and leave room for the derived queue names."""
    if not value.strip():
        return "must not be empty"
    if len(value.encode()) > MAX_QUEUE_NAME_BYTES:
        return f"is longer than {MAX_QUEUE_NAME_BYTES} bytes"
    return None


_BOOL_EXPECTED = "true or false (also yes/no, on/off, 1/0)"
_POSITIVE_SECONDS = "a number of seconds greater than 0"
_NON_NEGATIVE_SECONDS = "a number of seconds, 0 or more"
_PATH_EXPECTED = "a file path (a relative path starts at the INI file's directory)"
_FILE_EXPECTED = "a file path in an existing directory (relative to the INI file's directory)"


def _seconds(section: str, key: str, default: float, description: str, *,
             allow_zero: bool = False) -> Setting:
    """A duration in seconds; most keys refuse 0 because 0 would mean "never wait"."""
    return Setting(
        section, key, parse_float, default,
        _NON_NEGATIVE_SECONDS if allow_zero else _POSITIVE_SECONDS,
        description,
        check=at_least(0) if allow_zero else greater_than(0),
        unit=SECONDS,
    )


def _http_timeout(key: str, default: float, description: str) -> Setting:
    """An HTTP timeout; 0 and ``none`` are only accepted with ``allow_no_timeout``."""
    return Setting(
        "http", key, parse_optional_seconds, default,
        _POSITIVE_SECONDS + " (0 or none only with allow_no_timeout = true)",
        description, check=at_least(0), unit=SECONDS,
    )


def _flag(section: str, key: str, default: bool, description: str) -> Setting:
    """A boolean switch."""
    return Setting(section, key, parse_bool, default, _BOOL_EXPECTED, description)


_CONSUMER = (
    Setting(
        "consumer", "concurrency", parse_int, DEFAULT_CONCURRENCY,
        f"an integer from {MIN_CONCURRENCY} to {MAX_CONCURRENCY}",
        "How many tasks may run at the same time.",
        check=in_range(MIN_CONCURRENCY, MAX_CONCURRENCY),
    ),
    _seconds(
        "consumer", "max_batch_collect_time", DEFAULT_MAX_BATCH_COLLECT_TIME_SECONDS,
        "How long to keep collecting jobs for a batch before starting it.",
        allow_zero=True,
    ),
    _seconds(
        "consumer", "task_timeout", DEFAULT_TASK_TIMEOUT_SECONDS,
        "How long one task may run before it is interrupted and retried.",
    ),
    _seconds(
        "consumer", "shutdown_timeout", DEFAULT_SHUTDOWN_TIMEOUT_SECONDS,
        "How long shutdown waits for running tasks before cancelling them.",
        allow_zero=True,
    ),
    Setting(
        "consumer", "mode", choice(MODES, "mode"), DEFAULT_MODE,
        "one of: " + ", ".join(MODES),
        "sliding starts a task whenever a slot frees; batch waits for a whole batch.",
    ),
    _seconds(
        "consumer", "idle_poll_max", DEFAULT_IDLE_POLL_MAX_SECONDS,
        "The longest pause between polls of an empty queue.",
    ),
    _seconds(
        "consumer", "stats_interval", DEFAULT_STATS_INTERVAL_SECONDS,
        "How often throughput statistics are logged.",
    ),
)

_PROVIDER = (
    Setting(
        "provider", "type", parse_provider_type, DEFAULT_PROVIDER_TYPE,
        "sqlite, rabbitmq, redis, or an import path like package.module:Class",
        "The job source; any other key of a custom provider is passed to it as a string.",
    ),
    Setting(
        "provider", "path", parse_file_path, DEFAULT_SQLITE_PATH, _FILE_EXPECTED,
        "The sqlite queue database.", providers=(PROVIDER_SQLITE,), parse_default=parse_path,
    ),
    replace(_seconds(
        "provider", "lease_time", DEFAULT_LEASE_TIME_SECONDS,
        "How long a taken job stays invisible before another worker may take it; must "
        "be at least task_timeout + 35 s.",
    ), providers=(PROVIDER_SQLITE,)),
    Setting(
        "provider", "url", parse_string, "",
        "amqp://user:password@host:port/vhost or redis://[:password@]host:port/db",
        "The broker; empty means the local default (amqp://guest:guest@127.0.0.1:5672/%2F "
        "or redis://127.0.0.1:6379/0). Put the password in ${VAR}.",
        providers=BROKERS,
    ),
    Setting(
        "provider", "queue", parse_string, DEFAULT_QUEUE_NAME, "a name",
        "The queue (RabbitMQ) or stream (Redis); retry and dead-letter queues take it as "
        "a prefix.", check=queue_name_problem, providers=BROKERS,
    ),
    Setting(
        "provider", "prefetch", parse_int, PREFETCH_FOLLOWS_CONCURRENCY,
        "a whole number, 0 or more",
        "Unacknowledged messages a worker may hold; 0 follows concurrency.",
        check=at_least(0), providers=(PROVIDER_RABBITMQ,),
    ),
    replace(_seconds(
        "provider", "heartbeat", DEFAULT_HEARTBEAT_SECONDS,
        "The AMQP heartbeat the worker asks for; a dead connection is noticed within "
        "about twice this.",
    ), providers=(PROVIDER_RABBITMQ,)),
    replace(_seconds(
        "provider", "claim_idle_time", DEFAULT_CLAIM_IDLE_TIME_SECONDS,
        "How long a message may sit unacknowledged with a worker before another worker "
        "claims it; must be at least task_timeout + 35 s.",
    ), providers=(PROVIDER_REDIS,)),
    replace(_seconds(
        "provider", "poll_timeout", DEFAULT_POLL_TIMEOUT_SECONDS,
        "How long one blocking read of the stream waits for new messages.",
    ), providers=(PROVIDER_REDIS,)),
    replace(_seconds(
        "provider", "socket_timeout", DEFAULT_SOCKET_TIMEOUT_SECONDS,
        "How long a Redis reply may take; must exceed poll_timeout by at least 1 s.",
    ), providers=(PROVIDER_REDIS,)),
    replace(_seconds(
        "provider", "reconnect_max", DEFAULT_RECONNECT_MAX_SECONDS,
        "The longest pause between two reconnection attempts to a lost broker.",
    ), providers=BROKERS),
)

_HTTP = (
    _http_timeout(
        "connect_timeout", DEFAULT_CONNECT_TIMEOUT_SECONDS,
        "How long to wait for a TCP/TLS connection.",
    ),
    _http_timeout(
        "read_timeout", DEFAULT_READ_TIMEOUT_SECONDS,
        "How long to wait between bytes of a response.",
    ),
    Setting(
        "http", "verify", parse_verify, DEFAULT_VERIFY,
        _BOOL_EXPECTED + ", or the path of an existing CA bundle file",
        "Whether to verify TLS certificates, or the CA bundle to verify them with.",
    ),
    Setting(
        "http", "pool_size", parse_int, DEFAULT_POOL_SIZE,
        "an integer, 0 or more (0 follows [consumer] concurrency)",
        "Connections kept per host; 0 means one per concurrent task.",
        check=at_least(0),
    ),
    Setting(
        "http", "transport", choice(HTTP_TRANSPORTS, "transport"), DEFAULT_HTTP_TRANSPORT,
        "auto, fast or requests",
        "How requests are sent: fast uses geventhttpclient (several times less CPU per "
        "request) and fails a request it does not support; requests uses requests' own "
        "stack; auto sends with fast what it supports and with requests the rest.",
    ),
    Setting(
        "http", "max_body_bytes", parse_int, DEFAULT_MAX_BODY_BYTES,
        "a whole number of bytes, 0 or more (0: no limit)",
        "A response body larger than this (after decompression) fails the job instead "
        "of filling the worker's memory.",
        check=at_least(0),
    ),
    _flag(
        "http", "raise_for_status", DEFAULT_RAISE_FOR_STATUS,
        "Whether a 4xx or 5xx answer counts as a failure.",
    ),
    Setting(
        "http", "user_agent", parse_string, DEFAULT_USER_AGENT, "a non-empty string",
        "The User-Agent header sent with every request.", check=not_empty,
    ),
    _flag(
        "http", "allow_no_timeout", DEFAULT_ALLOW_NO_TIMEOUT,
        "Lets a timeout of 0 or none mean \"wait forever\"; off because a hung server "
        "would then hold a task slot for good.",
    ),
)

_RETRY = (
    Setting(
        "retry", "max_attempts", parse_int, DEFAULT_MAX_ATTEMPTS,
        f"an integer from 1 to {MAX_MAX_ATTEMPTS}",
        "How many times a job is tried before it is dead-lettered (a job may override).",
        check=in_range(1, MAX_MAX_ATTEMPTS),
    ),
    _seconds(
        "retry", "backoff_base", DEFAULT_BACKOFF_BASE_SECONDS,
        "The delay before the first retry; it doubles on each further one.",
    ),
    Setting(
        "retry", "backoff_max", parse_float, DEFAULT_BACKOFF_MAX_SECONDS,
        "a number of seconds, at least backoff_base",
        "The longest delay between two attempts.",
        check=greater_than(0), unit=SECONDS,
    ),
    Setting(
        "retry", "jitter", parse_float, DEFAULT_JITTER_FRACTION, "a fraction from 0 to 1",
        "How much of each delay is randomised, so retries do not arrive in waves.",
        check=in_range(0, 1), unit=FRACTION,
    ),
)

_RESULTS = (
    Setting(
        "results", "path", parse_file_path, DEFAULT_RESULTS_PATH, _FILE_EXPECTED,
        "The JSON-lines file each finished job is appended to.", parse_default=parse_path,
    ),
    _flag(
        "results", "fsync", DEFAULT_RESULTS_FSYNC,
        "Whether each result is flushed to disk before the job is acknowledged.",
    ),
)

_LOGGING = (
    Setting(
        "logging", "level", choice(LOG_LEVELS, "log level", upper=True), DEFAULT_LOG_LEVEL,
        "one of: " + ", ".join(LOG_LEVELS) + " (any case)",
        "The least severe message that is logged.",
    ),
    Setting(
        "logging", "format", choice(LOG_FORMATS, "log format"), DEFAULT_LOG_FORMAT,
        "one of: " + ", ".join(LOG_FORMATS),
        "text for people, json for log collectors.",
    ),
    Setting(
        "logging", "file", parse_optional_path, DEFAULT_LOG_FILE,
        "a file path, or nothing for stderr",
        "The log file; empty logs to stderr.",
    ),
    _flag(
        "logging", "enqueue", DEFAULT_LOG_ENQUEUE,
        "Whether log records go through a queue so that writing never blocks a task.",
    ),
)

_LOGGING_BLOCKED_HUB = (
    Setting(
        "logging", "block_report_seconds", parse_float, DEFAULT_BLOCK_REPORT_SECONDS,
        _NON_NEGATIVE_SECONDS + " (0: off)",
        "Log a warning with the stack of any code that keeps every task waiting (holds "
        "the event loop) this long; 0 turns the check off, which costs nothing.",
        check=at_least(0), unit=SECONDS,
    ),
)

_METRICS = (
    _flag(
        "metrics", "enabled", DEFAULT_METRICS_ENABLED,
        "Serve /metrics (Prometheus text format), /healthz and /readyz over HTTP.",
    ),
    Setting(
        "metrics", "host", parse_string, DEFAULT_METRICS_HOST, "an IP address or host name",
        "The address the endpoint listens on; the default keeps it on this machine.",
        check=not_empty,
    ),
    Setting(
        "metrics", "port", parse_int, DEFAULT_METRICS_PORT, "a port number from 0 to 65535",
        "The port the endpoint listens on; 0 picks a free one and logs it.",
        check=in_range(0, 65535),
    ),
    Setting(
        "metrics", "top_hosts", parse_int, DEFAULT_METRICS_TOP_HOSTS,
        f"a whole number from 0 to {MAX_METRICS_TOP_HOSTS}",
        "How many target hosts get series of their own; the rest are counted as "
        "\"other\", so that the number of series stays bounded.",
        check=in_range(0, MAX_METRICS_TOP_HOSTS),
    ),
)


class SettingsRegistry:
    """All settings in documentation order, with lookups by section and key."""

    def __init__(self, settings: Sequence[Setting]) -> None:
        self._settings = tuple(settings)
        self._by_name = {(s.section, s.key): s for s in self._settings}
        self._sections = tuple(dict.fromkeys(s.section for s in self._settings))

    def __iter__(self) -> Iterator[Setting]:
        return iter(self._settings)

    def __len__(self) -> int:
        return len(self._settings)

    def sections(self) -> tuple[str, ...]:
        """The section names in documentation order."""
        return self._sections

    def in_section(self, section: str) -> tuple[Setting, ...]:
        """The settings of one section in documentation order."""
        return tuple(s for s in self._settings if s.section == section)

    def keys(self, section: str) -> tuple[str, ...]:
        """The key names of one section, for "did you mean" hints."""
        return tuple(s.key for s in self.in_section(section))

    def get(self, section: str, key: str) -> Setting:
        """The setting for ``[section] key``; ``KeyError`` if there is none."""
        return self._by_name[(section, key)]


SETTINGS = SettingsRegistry(
    _CONSUMER + _PROVIDER + _HTTP + _RETRY + _RESULTS + _LOGGING + _LOGGING_BLOCKED_HUB
    + _METRICS
)
