"""Read the daemon's INI file once into a validated, immutable :class:`Config`.

Library classes take the finished ``Config`` (or one of its sections) and never read
files themselves, so a bad setting is found at startup rather than on the first job
that happens to need it. Every problem in a file is reported at once, because an
operator who fixes one typo per restart will stop trusting the daemon.

Only the standard library is imported here: the CLI loads the configuration before
gevent monkey-patches the process.
"""

from __future__ import annotations

import configparser
import dataclasses
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any

from async_consumer import settings as s
from async_consumer.errors import ConfigError

__all__ = [
    "Config",
    "ConfigErrors",
    "ConsumerConfig",
    "HttpConfig",
    "LoggingConfig",
    "MetricsConfig",
    "ProviderConfig",
    "ResultsConfig",
    "RetryConfig",
    "load_config",
    "parse_config",
    "redact",
]

# configparser copies its default section into every other one; no key here is shared,
# so a [DEFAULT] in the file is treated like any other unknown section instead.
_NO_DEFAULT_SECTION = "\0no default section"

_REFERENCE = re.compile(r"\$\$|\$\{(?P<body>[^}]*)\}|\$\{")
_REFERENCE_BODY = re.compile(r"(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?::-(?P<default>.*))?", re.S)
_REFERENCE_EXPECTED = "a reference like ${NAME} or ${NAME:-default}, or $$ for a plain $"


_SECRET_KEY_PARTS = ("password", "passwd", "secret", "token", "key")
_URL_PASSWORD = re.compile(r"(?P<head>[A-Za-z][A-Za-z0-9+.-]*://[^:/?#@\s]*:)[^/?#\s]*@")
_REDACTED = "***"


@dataclass(frozen=True)
class ConsumerConfig:
    """``[consumer]``: how many tasks run at once and how the consumer paces itself."""

    concurrency: int = s.DEFAULT_CONCURRENCY
    max_batch_collect_time: float = s.DEFAULT_MAX_BATCH_COLLECT_TIME_SECONDS
    task_timeout: float = s.DEFAULT_TASK_TIMEOUT_SECONDS
    shutdown_timeout: float = s.DEFAULT_SHUTDOWN_TIMEOUT_SECONDS
    mode: str = s.DEFAULT_MODE
    idle_poll_max: float = s.DEFAULT_IDLE_POLL_MAX_SECONDS
    stats_interval: float = s.DEFAULT_STATS_INTERVAL_SECONDS


@dataclass(frozen=True)
class ProviderConfig:
    """``[provider]``: the job source.

    Keys that do not belong to the chosen ``type`` are ``None``. A custom provider
    instead gets every key but ``type`` as strings in ``options``.
    """

    type: str = s.DEFAULT_PROVIDER_TYPE
    path: Path | None = Path(s.DEFAULT_SQLITE_PATH)
    lease_time: float | None = s.DEFAULT_LEASE_TIME_SECONDS
    url: str | None = None
    queue: str | None = None
    prefetch: int | None = None
    heartbeat: float | None = None
    claim_idle_time: float | None = None
    poll_timeout: float | None = None
    socket_timeout: float | None = None
    reconnect_max: float | None = None
    options: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))

    @property
    def broker_url(self) -> str:
        """``url``, or the local default of a broker type when it was left empty."""
        return self.url or s.DEFAULT_BROKER_URLS.get(self.type, "")


@dataclass(frozen=True)
class HttpConfig:
    """``[http]``: the shared session; a timeout of ``None`` means "wait forever"."""

    connect_timeout: float | None = s.DEFAULT_CONNECT_TIMEOUT_SECONDS
    read_timeout: float | None = s.DEFAULT_READ_TIMEOUT_SECONDS
    verify: bool | Path = s.DEFAULT_VERIFY
    pool_size: int = s.DEFAULT_POOL_SIZE
    transport: str = s.DEFAULT_HTTP_TRANSPORT
    max_body_bytes: int = s.DEFAULT_MAX_BODY_BYTES
    raise_for_status: bool = s.DEFAULT_RAISE_FOR_STATUS
    user_agent: str = s.DEFAULT_USER_AGENT
    allow_no_timeout: bool = s.DEFAULT_ALLOW_NO_TIMEOUT


@dataclass(frozen=True)
class RetryConfig:
    """``[retry]``: the backoff schedule; a job's own ``max_attempts`` wins."""

    max_attempts: int = s.DEFAULT_MAX_ATTEMPTS
    backoff_base: float = s.DEFAULT_BACKOFF_BASE_SECONDS
    backoff_max: float = s.DEFAULT_BACKOFF_MAX_SECONDS
    jitter: float = s.DEFAULT_JITTER_FRACTION


@dataclass(frozen=True)
class ResultsConfig:
    """``[results]``: the append-only record of finished jobs."""

    path: Path = Path(s.DEFAULT_RESULTS_PATH)
    fsync: bool = s.DEFAULT_RESULTS_FSYNC


@dataclass(frozen=True)
class LoggingConfig:
    """``[logging]``: ``file`` is ``None`` for stderr; ``level`` is upper-case."""

    level: str = s.DEFAULT_LOG_LEVEL
    format: str = s.DEFAULT_LOG_FORMAT
    file: Path | None = s.DEFAULT_LOG_FILE
    enqueue: bool = s.DEFAULT_LOG_ENQUEUE
    block_report_seconds: float = s.DEFAULT_BLOCK_REPORT_SECONDS


@dataclass(frozen=True)
class MetricsConfig:
    """``[metrics]``: the opt-in metrics and health endpoint."""

    enabled: bool = s.DEFAULT_METRICS_ENABLED
    host: str = s.DEFAULT_METRICS_HOST
    port: int = s.DEFAULT_METRICS_PORT
    top_hosts: int = s.DEFAULT_METRICS_TOP_HOSTS


_SECTION_TYPES: dict[str, type] = {
    "consumer": ConsumerConfig,
    "provider": ProviderConfig,
    "http": HttpConfig,
    "retry": RetryConfig,
    "results": ResultsConfig,
    "logging": LoggingConfig,
    "metrics": MetricsConfig,
}


@dataclass(frozen=True)
class Config:
    """The whole configuration; immutable so no component can change another's view."""

    source: str = "<defaults>"
    consumer: ConsumerConfig = field(default_factory=ConsumerConfig)
    provider: ProviderConfig = field(default_factory=ProviderConfig)
    http: HttpConfig = field(default_factory=HttpConfig)
    retry: RetryConfig = field(default_factory=RetryConfig)
    results: ResultsConfig = field(default_factory=ResultsConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)
    metrics: MetricsConfig = field(default_factory=MetricsConfig)

    def describe(self) -> dict[str, Any]:
        """The settings in force as plain data, for the startup log line.

        Secrets are masked because log lines travel to places the INI file never goes.
        """
        described: dict[str, Any] = {"source": self.source}
        for name in _SECTION_TYPES:
            described[name] = _describe_section(getattr(self, name))
        return described


class ConfigErrors(ConfigError):
    """Every problem found in one file, one per line; ``errors`` holds them singly.

    It is a :class:`ConfigError` so that callers need to catch only that.
    """

    def __init__(self, errors: Sequence[ConfigError], source: str) -> None:
        self.errors = list(errors)
        super().__init__(_summarise(self.errors, source))
        self.source = source


def load_config(path: str | os.PathLike[str], *, import_provider: bool = True) -> Config:
    """Read, validate and freeze the INI file at ``path``.

    Relative paths inside the file start at the file's own directory. A custom provider
    class is imported to prove it exists; pass ``import_provider=False`` to defer that
    until gevent has patched the process (then call
    :func:`async_consumer.settings.import_provider_class` yourself).
    """
    source = os.fspath(path)
    file_path = Path(source)

    text = _read_text(file_path, source)

    return parse_config(
        text, source, file_path.absolute().parent, import_provider=import_provider
    )


def parse_config(
    text: str, source: str, base_dir: Path, *, import_provider: bool = True
) -> Config:
    """Validate INI ``text``; ``source`` names it in messages, ``base_dir`` anchors paths.

    Raises :class:`ConfigErrors` listing every problem found.
    """
    parser = _read_ini(text, source)

    loader = _Loader(parser, source, Path(base_dir))
    values = loader.load(import_provider)
    if loader.errors:
        raise ConfigErrors(loader.errors, source)

    sections = {name: kind(**values[name]) for name, kind in _SECTION_TYPES.items()}
    return Config(source=source, **sections)


def redact(key: str, value: str) -> str:
    """Mask ``value`` if ``key`` looks secret, and any password inside a URL."""
    lowered = key.lower()
    if value and any(part in lowered for part in _SECRET_KEY_PARTS):
        return _REDACTED
    return _URL_PASSWORD.sub(rf"\g<head>{_REDACTED}@", value)


def _describe_section(section: Any) -> dict[str, Any]:
    """One section as a dict of loggable values."""
    return {
        item.name: _describe_value(item.name, getattr(section, item.name))
        for item in dataclasses.fields(section)
    }


def _describe_value(key: str, value: Any) -> Any:
    """A value made loggable: paths as text, strings redacted, mappings recursed."""
    if isinstance(value, Mapping):
        return {name: _describe_value(name, item) for name, item in value.items()}
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, str):
        return redact(key, value)
    return value


def _summarise(errors: Sequence[ConfigError], source: str) -> str:
    """One line per error, under a count when there is more than one."""
    if len(errors) == 1:
        return str(errors[0])

    lines = [f"{source}: {len(errors)} configuration errors"]
    lines.extend(str(error) for error in errors)
    return "\n".join(lines)


def _read_text(file_path: Path, source: str) -> str:
    """The file's text; any failure to read it is a ConfigError naming the file."""
    try:
        return file_path.read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        reason = "file not found"
    except IsADirectoryError:
        reason = "is a directory, not a file"
    except PermissionError:
        reason = "cannot read the file: permission denied"
    except UnicodeDecodeError as exc:
        reason = f"not UTF-8 text ({exc.reason} at byte {exc.start})"
    except OSError as exc:
        reason = f"cannot read the file: {exc.strerror or exc}"

    raise ConfigErrors([ConfigError(reason, source=source)], source)


def _read_ini(text: str, source: str) -> configparser.ConfigParser:
    """Parse the INI syntax; ``${...}`` is expanded later, key by key."""
    parser = configparser.ConfigParser(
        interpolation=None, default_section=_NO_DEFAULT_SECTION
    )

    try:
        parser.read_string(text, source=source)
    except configparser.Error as exc:
        raise ConfigErrors(_syntax_errors(exc, source), source) from exc
    return parser


def _syntax_errors(exc: configparser.Error, source: str) -> list[ConfigError]:
    """Turn configparser's exception into messages that name the line."""
    if isinstance(exc, configparser.MissingSectionHeaderError):
        return [ConfigError(
            f"line {exc.lineno}: a setting before any [section] header",
            source=source, value=exc.line.strip(), expected="a [section] line first",
        )]
    if isinstance(exc, configparser.ParsingError):
        return [
            ConfigError(
                f"line {lineno}: not a 'key = value' line (got {line})",
                source=source, expected="key = value, [section] or a # comment",
            )
            for lineno, line in exc.errors
        ]
    if isinstance(exc, configparser.DuplicateSectionError):
        return [ConfigError(f"line {exc.lineno}: section appears twice",
                            source=source, section=exc.section)]
    if isinstance(exc, configparser.DuplicateOptionError):
        return [ConfigError(f"line {exc.lineno}: key appears twice in this section",
                            source=source, section=exc.section, key=exc.option)]
    return [ConfigError(f"not a valid INI file: {exc}", source=source)]


class _ExpansionError(ValueError):
    """A ``${...}`` reference that cannot be expanded."""

    def __init__(self, reason: str, expected: str) -> None:
        super().__init__(reason)
        self.reason = reason
        self.expected = expected


def _expand_env(text: str, environ: Mapping[str, str]) -> str:
    """Replace ``${NAME}``, ``${NAME:-default}`` and ``$$``; a lone ``$`` stays as is.

    Like the shell, ``:-`` uses the default when the variable is unset or empty. The
    result is not expanded again, so an environment value may contain ``${``.
    """

    def replace(match: re.Match[str]) -> str:
        if match.group(0) == "$$":
            return "$"
        if match.group("body") is None:
            raise _ExpansionError("unterminated ${ (no closing brace)", _REFERENCE_EXPECTED)
        return _lookup(match.group("body"), environ)

    return _REFERENCE.sub(replace, text)


def _lookup(body: str, environ: Mapping[str, str]) -> str:
    """The value for the inside of one ``${...}``."""
    match = _REFERENCE_BODY.fullmatch(body)
    if match is None:
        raise _ExpansionError(f"bad variable reference ${{{body}}}", _REFERENCE_EXPECTED)

    name, default = match.group("name"), match.group("default")
    value = environ.get(name)
    if default is not None and not value:
        return default
    if value is None:
        raise _ExpansionError(
            f"environment variable {name} is not set",
            f"{name} to be set, or a default as ${{{name}:-default}}",
        )
    return value


class _Loader:
    """Walks the parsed file against the registry, collecting values and errors.

    Nothing stops at the first problem: each key is judged on its own, and cross-key
    checks run only between keys that were themselves valid, so one typo does not
    cause a cascade of follow-on messages.
    """

    def __init__(self, parser: configparser.ConfigParser, source: str, base_dir: Path):
        self.parser = parser
        self.source = source
        self.base_dir = base_dir
        self.errors: list[ConfigError] = []
        self._texts: dict[tuple[str, str], str] = {}
        self._given: set[tuple[str, str]] = set()

    def load(self, import_provider: bool) -> dict[str, dict[str, Any]]:
        """Every section's values by key; ``self.errors`` says whether they are whole."""
        self._check_sections()

        values: dict[str, dict[str, Any]] = {}
        for section in s.SETTINGS.sections():
            if section == "provider":
                values[section] = self._load_provider(import_provider)
            else:
                values[section] = self._load_section(section)

        self._check_backoff(values["retry"])
        self._apply_no_timeout(values["http"])
        return values

    def _error(self, reason: str, section: str | None = None, key: str | None = None,
               value: Any = None, expected: str | None = None) -> None:
        """Record one problem, located in this file."""
        self.errors.append(ConfigError(
            reason, source=self.source, section=section, key=key,
            value=value, expected=expected,
        ))

    def _check_sections(self) -> None:
        """Report sections the registry does not know."""
        known = s.SETTINGS.sections()
        for section in self.parser.sections():
            if section not in known:
                self._error(
                    s.with_suggestion("unknown section", section, known), section,
                    expected="one of: " + ", ".join(f"[{name}]" for name in known),
                )

    def _check_keys(self, section: str, raw: Mapping[str, str], hint: str = "") -> None:
        """Report keys the registry does not know in ``section``."""
        known = s.SETTINGS.keys(section)
        for key in raw:
            if key not in known:
                self._error(
                    s.with_suggestion("unknown key", key, known), section, key,
                    expected="one of: " + ", ".join(known) + hint,
                )

    def _raw(self, section: str) -> dict[str, str]:
        """The section's keys and unexpanded values; an absent section is empty."""
        if not self.parser.has_section(section):
            return {}
        return dict(self.parser.items(section))

    def _expand(self, section: str, key: str, raw: str) -> str | None:
        """``raw`` with ``${...}`` expanded, or ``None`` after recording why not."""
        try:
            return _expand_env(raw, os.environ)
        except _ExpansionError as exc:
            self._error(exc.reason, section, key, raw, exc.expected)
            return None

    def _load_section(self, section: str) -> dict[str, Any]:
        """The valid values of an ordinary section."""
        raw = self._raw(section)
        self._check_keys(section, raw)

        values: dict[str, Any] = {}
        for setting in s.SETTINGS.in_section(section):
            self._load_setting(setting, raw, values)
        return values

    def _load_setting(self, setting: s.Setting, raw: Mapping[str, str],
                      values: dict[str, Any]) -> None:
        """Put the setting's value into ``values``, or record why it is unusable."""
        name = (setting.section, setting.key)
        if setting.key in raw:
            text = self._expand(setting.section, setting.key, raw[setting.key])
            self._given.add(name)
        else:
            text = setting.default_text
        if text is None:
            return

        self._texts[name] = text
        try:
            values[setting.key] = setting.validate(text, self.base_dir, setting.key in raw)
        except ValueError as exc:
            reason = str(exc)
            if setting.key in raw and raw[setting.key] != text:
                reason += f", expanded from {raw[setting.key]!r}"
            self._error(reason, setting.section, setting.key, text, setting.expected)

    def _load_provider(self, import_provider: bool) -> dict[str, Any]:
        """``[provider]``, whose allowed keys depend on its ``type``."""
        raw = self._raw("provider")
        values: dict[str, Any] = {}
        self._load_setting(s.SETTINGS.get("provider", "type"), raw, values)

        provider_type = values.get("type")
        if provider_type is None:
            return values
        if provider_type in s.BUILTIN_PROVIDERS:
            return self._load_builtin_provider(provider_type, raw, values)
        return self._load_custom_provider(provider_type, raw, values, import_provider)

    def _load_builtin_provider(self, provider_type: str, raw: Mapping[str, str],
                               values: dict[str, Any]) -> dict[str, Any]:
        """A built-in provider takes only the registry's keys for its type."""
        settings = [setting for setting in s.SETTINGS.in_section("provider")
                    if setting.applies_to(provider_type)]
        known = [setting.key for setting in settings]
        for key in raw:
            if key not in known:
                self._error(
                    s.with_suggestion("unknown key", key, known), "provider", key,
                    expected=f"for type = {provider_type} one of: {', '.join(known)} "
                    "(other keys need a custom provider type)",
                )

        for setting in settings:
            if setting.key != "type":
                self._load_setting(setting, raw, values)
        for setting in s.SETTINGS.in_section("provider"):
            values.setdefault(setting.key, None)
        values["options"] = MappingProxyType({})
        self._check_poll_timeout(values, raw)
        return values

    def _check_poll_timeout(self, values: dict[str, Any], raw: Mapping[str, str]) -> None:
        """A blocking read longer than the socket timeout ends in a timeout error."""
        poll, socket_timeout = values.get("poll_timeout"), values.get("socket_timeout")
        if poll is None or socket_timeout is None or socket_timeout >= poll + 1:
            return
        key = "socket_timeout" if "socket_timeout" in raw else "poll_timeout"
        self._error(
            "socket_timeout must exceed poll_timeout by at least 1 second, or every "
            "empty poll would end in a Redis timeout error",
            "provider", key, raw.get(key), f"socket_timeout >= {poll + 1:g}",
        )

    def _load_custom_provider(self, provider_type: str, raw: Mapping[str, str],
                              values: dict[str, Any], import_provider: bool) -> dict[str, Any]:
        """A custom provider gets every other key, expanded but otherwise untouched."""
        options = {}
        for key, text in raw.items():
            expanded = self._expand("provider", key, text) if key != "type" else None
            if expanded is not None:
                options[key] = expanded

        if import_provider:
            self._check_import(provider_type)

        for setting in s.SETTINGS.in_section("provider"):
            if setting.key != "type":
                values[setting.key] = None
        values["options"] = MappingProxyType(options)
        return values

    def _check_import(self, spec: str) -> None:
        """Prove the provider class exists now rather than when the daemon starts work.

        Anything a module raises while importing is reported, because to the operator
        it means the same thing: this provider cannot be used.
        """
        try:
            s.import_provider_class(spec)
        except Exception as exc:
            self._error(
                f"cannot import the provider class: {type(exc).__name__}: {exc}",
                "provider", "type", spec, "an importable package.module:Class",
            )

    def _check_backoff(self, retry: Mapping[str, Any]) -> None:
        """``backoff_max`` below ``backoff_base`` would make the cap meaningless.

        The message goes to whichever of the two keys the file actually set.
        """
        base, cap = retry.get("backoff_base"), retry.get("backoff_max")
        if base is None or cap is None or cap >= base:
            return

        if ("retry", "backoff_max") in self._given:
            self._error(
                f"smaller than backoff_base ({base:g})", "retry", "backoff_max",
                self._texts[("retry", "backoff_max")], f"a number of seconds >= {base:g}",
            )
        else:
            self._error(
                f"larger than backoff_max ({cap:g}, its default)", "retry", "backoff_base",
                self._texts[("retry", "backoff_base")], f"a number of seconds <= {cap:g}",
            )

    def _apply_no_timeout(self, http: dict[str, Any]) -> None:
        """Turn 0/none into ``None`` when allowed; refuse it otherwise.

        A request without a timeout can hang on a dead server forever and hold a task
        slot with it, so switching timeouts off must be asked for explicitly.
        """
        allowed = http.get("allow_no_timeout")
        if allowed is None:
            return

        for key in ("connect_timeout", "read_timeout"):
            if key not in http or (http[key] is not None and http[key] > 0):
                continue
            if allowed:
                http[key] = None
                continue
            self._error(
                "0 or none would switch the timeout off, which is refused unless "
                "allow_no_timeout = true is set in [http]",
                "http", key, self._texts[("http", key)], "a number of seconds greater than 0",
            )
