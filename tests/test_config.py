"""The INI loader: defaults, every class of bad value, ${VAR} expansion and redaction."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from async_consumer import settings
from async_consumer.config import (
    Config,
    ConfigErrors,
    load_config,
    parse_config,
    redact,
)
from async_consumer.errors import ConfigError

PROVIDER_MODULE = "acfg_test_provider"


def write_ini(directory: Path, text: str, name: str = "worker.ini") -> Path:
    """Write ``text`` (dedented) as an INI file and return its path."""
    path = directory / name
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    return path


def load_errors(path: Path) -> ConfigErrors:
    """Load ``path`` expecting failure; the raised error."""
    with pytest.raises(ConfigErrors) as caught:
        load_config(path)
    return caught.value


def only_error(path: Path) -> ConfigError:
    """Load ``path`` expecting exactly one problem; that problem."""
    failure = load_errors(path)
    assert len(failure.errors) == 1, str(failure)
    return failure.errors[0]


@pytest.fixture
def provider_module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """An importable module holding a provider class, on a temporary sys.path entry."""
    package_dir = tmp_path / "pkgs"
    package_dir.mkdir()
    (package_dir / f"{PROVIDER_MODULE}.py").write_text(
        "class Provider:\n    pass\n", encoding="utf-8"
    )
    monkeypatch.syspath_prepend(str(package_dir))
    monkeypatch.delitem(sys.modules, PROVIDER_MODULE, raising=False)
    return PROVIDER_MODULE


# Defaults


EXPECTED_DEFAULTS = {
    ("consumer", "concurrency"): 10,
    ("consumer", "max_batch_collect_time"): 0.1,
    ("consumer", "task_timeout"): 60.0,
    ("consumer", "shutdown_timeout"): 30.0,
    ("consumer", "mode"): "sliding",
    ("consumer", "idle_poll_max"): 1.0,
    ("consumer", "stats_interval"): 10.0,
    ("provider", "type"): "sqlite",
    ("provider", "lease_time"): 300.0,
    ("http", "connect_timeout"): 5.0,
    ("http", "read_timeout"): 30.0,
    ("http", "verify"): True,
    ("http", "pool_size"): 0,
    ("http", "transport"): "auto",
    ("http", "max_body_bytes"): 10 * 1024 * 1024,
    ("http", "raise_for_status"): True,
    ("http", "allow_no_timeout"): False,
    ("retry", "max_attempts"): 5,
    ("retry", "backoff_base"): 1.0,
    ("retry", "backoff_max"): 300.0,
    ("retry", "jitter"): 0.5,
    ("results", "fsync"): True,
    ("logging", "level"): "INFO",
    ("logging", "format"): "text",
    ("logging", "file"): None,
    ("logging", "enqueue"): False,
    ("logging", "block_report_seconds"): 0.0,
    ("metrics", "enabled"): False,
    ("metrics", "host"): "127.0.0.1",
    ("metrics", "port"): 9464,
    ("metrics", "top_hosts"): 20,
}


@pytest.mark.parametrize(("section", "key"), sorted(EXPECTED_DEFAULTS))
def test_empty_file_gives_every_default(tmp_path: Path, section: str, key: str) -> None:
    config = load_config(write_ini(tmp_path, ""))

    assert getattr(getattr(config, section), key) == EXPECTED_DEFAULTS[(section, key)]


def test_default_paths_and_user_agent(tmp_path: Path) -> None:
    config = load_config(write_ini(tmp_path, ""))

    assert config.provider.path == tmp_path / "var" / "queue.sqlite3"
    assert config.results.path == tmp_path / "var" / "results.jsonl"
    assert config.provider.options == {}
    assert config.http.user_agent.startswith("async-consumer/")
    assert config.http.user_agent != "async-consumer/"


def test_empty_sections_also_give_defaults(tmp_path: Path) -> None:
    text = "".join(f"[{name}]\n" for name in settings.SETTINGS.sections())

    assert load_config(write_ini(tmp_path, text)).consumer.concurrency == 10


def test_every_registered_setting_is_covered_by_a_default_test() -> None:
    registered = {(item.section, item.key) for item in settings.SETTINGS
                  if item.applies_to(settings.PROVIDER_SQLITE)}

    assert registered - set(EXPECTED_DEFAULTS) == {
        ("provider", "path"), ("results", "path"), ("http", "user_agent"),
    }


def test_dataclass_defaults_match_the_registry() -> None:
    config = Config()

    for item in settings.SETTINGS:
        value = getattr(getattr(config, item.section), item.key)
        if not item.applies_to(config.provider.type):
            assert value is None, item.key
        elif isinstance(value, Path):
            assert value == Path(item.default), item.key
        else:
            assert settings.format_ini_value(value) == item.default_text, item.key


def test_registry_is_ordered_and_documented() -> None:
    assert settings.SETTINGS.sections() == (
        "consumer", "provider", "http", "retry", "results", "logging", "metrics",
    )
    keys = [item.key for item in settings.SETTINGS]
    assert keys[:2] == ["concurrency", "max_batch_collect_time"]
    assert len(keys) == len(settings.SETTINGS) == 42
    assert all(item.description and item.expected for item in settings.SETTINGS)
    assert set(settings.SECTION_DESCRIPTIONS) == set(settings.SETTINGS.sections())
    assert settings.SETTINGS.get("consumer", "task_timeout").unit == settings.SECONDS


def test_every_setting_is_a_dataclass_field() -> None:
    config = Config()

    for section in settings.SETTINGS.sections():
        fields = {item.name for item in dataclasses.fields(getattr(config, section))}
        assert set(settings.SETTINGS.keys(section)) <= fields


def test_config_is_immutable(tmp_path: Path) -> None:
    config = load_config(write_ini(tmp_path, ""))

    with pytest.raises(dataclasses.FrozenInstanceError):
        config.consumer.concurrency = 3  # type: ignore[misc]


def test_values_are_read(tmp_path: Path) -> None:
    path = write_ini(tmp_path, """
        [consumer]
        concurrency = 250
        mode = batch
        shutdown_timeout = 0
        [http]
        verify = off
        pool_size = 40
        user_agent = robot/1
        [retry]
        jitter = 1
        [logging]
        level = debug
        format = json
        enqueue = yes
    """)

    config = load_config(path)

    assert config.consumer.concurrency == 250
    assert config.consumer.mode == "batch"
    assert config.consumer.shutdown_timeout == 0.0
    assert config.http.verify is False
    assert config.http.pool_size == 40
    assert config.http.user_agent == "robot/1"
    assert config.retry.jitter == 1.0
    assert config.logging.level == "DEBUG"
    assert config.logging.format == "json"
    assert config.logging.enqueue is True
    assert config.source == str(path)


@pytest.mark.parametrize("word", ["true", "Yes", "ON", "1"])
def test_true_spellings(tmp_path: Path, word: str) -> None:
    path = write_ini(tmp_path, f"[results]\nfsync = {word}\n")

    assert load_config(path).results.fsync is True


@pytest.mark.parametrize("word", ["false", "No", "OFF", "0"])
def test_false_spellings(tmp_path: Path, word: str) -> None:
    path = write_ini(tmp_path, f"[results]\nfsync = {word}\n")

    assert load_config(path).results.fsync is False


# Bad values


def test_message_names_file_section_key_value_and_expectation() -> None:
    with pytest.raises(ConfigErrors) as caught:
        parse_config("[consumer]\nconcurrency = abc\n", "worker.ini", Path("/etc/ac"))

    assert str(caught.value) == (
        "worker.ini [consumer] concurrency: not a whole number (got 'abc'); "
        "expected an integer from 1 to 100000"
    )
    error = caught.value.errors[0]
    assert (error.source, error.section, error.key, error.value) == (
        "worker.ini", "consumer", "concurrency", "abc",
    )


BAD_VALUES = [
    ("consumer", "concurrency", "0", "out of range", "from 1 to 100000"),
    ("consumer", "concurrency", "100001", "out of range", "from 1 to 100000"),
    ("consumer", "concurrency", "2.5", "not a whole number", "an integer"),
    ("consumer", "concurrency", "", "not a whole number", "an integer"),
    ("consumer", "task_timeout", "0", "must be greater than 0", "greater than 0"),
    ("consumer", "task_timeout", "-1", "must be greater than 0", "seconds"),
    ("consumer", "task_timeout", "abc", "not a number", "seconds"),
    ("consumer", "task_timeout", "nan", "not a finite number", "seconds"),
    ("consumer", "max_batch_collect_time", "-0.5", "must not be negative", "0 or more"),
    ("consumer", "shutdown_timeout", "-1", "must not be negative", "0 or more"),
    ("consumer", "idle_poll_max", "0", "must be greater than 0", "seconds"),
    ("consumer", "stats_interval", "-3", "must be greater than 0", "seconds"),
    ("consumer", "mode", "slidng", "unknown mode (did you mean 'sliding'?)", "sliding, batch"),
    ("consumer", "mode", "parallel", "unknown mode", "one of: sliding, batch"),
    ("provider", "lease_time", "0", "must be greater than 0", "seconds"),
    ("provider", "path", "", "empty path", "file path"),
    ("http", "connect_timeout", "-2", "must not be negative", "seconds"),
    ("http", "read_timeout", "soon", "not a number", "seconds"),
    ("http", "verify", "maybe", "no CA bundle file exists", "true or false"),
    ("http", "pool_size", "-1", "must not be negative", "0 or more"),
    ("http", "transport", "quick", "unknown transport", "auto, fast or requests"),
    ("http", "raise_for_status", "sometimes", "not a boolean", "yes/no, on/off, 1/0"),
    ("http", "user_agent", "", "must not be empty", "non-empty"),
    ("http", "allow_no_timeout", "2", "not a boolean", "true or false"),
    ("retry", "max_attempts", "0", "out of range", "from 1 to 1000"),
    ("retry", "max_attempts", "1001", "out of range", "from 1 to 1000"),
    ("retry", "backoff_base", "-1", "must be greater than 0", "seconds"),
    ("retry", "jitter", "1.5", "out of range", "from 0 to 1"),
    ("retry", "jitter", "-0.1", "out of range", "from 0 to 1"),
    ("results", "path", " ", "empty path", "file path"),
    ("results", "fsync", "nope", "not a boolean", "true or false"),
    ("logging", "level", "verbose", "unknown log level", "TRACE, DEBUG"),
    ("logging", "level", "warnng", "did you mean 'WARNING'?", "any case"),
    ("logging", "format", "xml", "unknown log format", "text, json"),
    ("logging", "enqueue", "always", "not a boolean", "true or false"),
]


@pytest.mark.parametrize(("section", "key", "value", "reason", "expected"), BAD_VALUES)
def test_bad_value_is_reported_with_location(
    tmp_path: Path, section: str, key: str, value: str, reason: str, expected: str
) -> None:
    path = write_ini(tmp_path, f"[{section}]\n{key} = {value}\n")

    error = only_error(path)

    assert (error.source, error.section, error.key) == (str(path), section, key)
    assert error.value == value.strip()
    assert reason in error.reason
    assert expected in (error.expected or "")
    assert str(error).startswith(f"{path} [{section}] {key}: ")


def test_unknown_key_suggests_the_close_one(tmp_path: Path) -> None:
    error = only_error(write_ini(tmp_path, "[consumer]\nconcurency = 5\n"))

    assert (error.section, error.key) == ("consumer", "concurency")
    assert "unknown key (did you mean 'concurrency'?)" in str(error)
    assert "one of: concurrency, max_batch_collect_time" in str(error)


def test_unknown_key_without_a_close_match(tmp_path: Path) -> None:
    error = only_error(write_ini(tmp_path, "[retry]\ncolour = blue\n"))

    assert error.reason == "unknown key"
    assert error.value is None


def test_unknown_key_in_sqlite_provider(tmp_path: Path) -> None:
    error = only_error(write_ini(tmp_path, "[provider]\nqueue = jobs\n"))

    assert error.key == "queue"
    assert "custom provider" in str(error)


def test_unknown_section_suggests_the_close_one(tmp_path: Path) -> None:
    error = only_error(write_ini(tmp_path, "[consumr]\nconcurrency = 5\n"))

    assert error.section == "consumr"
    assert "unknown section (did you mean 'consumer'?)" in str(error)


def test_unknown_section_without_a_close_match(tmp_path: Path) -> None:
    error = only_error(write_ini(tmp_path, "[database]\nurl = x\n"))

    assert error.reason == "unknown section"
    assert "[consumer], [provider]" in (error.expected or "")


def test_default_section_is_not_special(tmp_path: Path) -> None:
    error = only_error(write_ini(tmp_path, "[DEFAULT]\nconcurrency = 5\n"))

    assert error.section == "DEFAULT"
    assert "unknown section" in error.reason


def test_keys_are_case_insensitive(tmp_path: Path) -> None:
    path = write_ini(tmp_path, "[consumer]\nConcurrency = 7\n")

    assert load_config(path).consumer.concurrency == 7


# Files and syntax


def test_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "absent.ini"

    error = only_error(path)

    assert str(error) == f"{path}: file not found"


def test_directory_instead_of_file(tmp_path: Path) -> None:
    assert "is a directory" in str(only_error(tmp_path))


def test_file_that_is_not_utf8(tmp_path: Path) -> None:
    path = tmp_path / "worker.ini"
    path.write_bytes(b"[consumer]\nmode = \xff\n")

    error = only_error(path)

    assert error.source == str(path)
    assert "not UTF-8" in error.reason


def test_utf8_byte_order_mark_is_accepted(tmp_path: Path) -> None:
    path = tmp_path / "worker.ini"
    path.write_bytes(b"\xef\xbb\xbf[consumer]\nconcurrency = 4\n")

    assert load_config(path).consumer.concurrency == 4


def test_syntax_error_names_file_and_line(tmp_path: Path) -> None:
    path = write_ini(tmp_path, "[consumer]\nconcurrency = 4\nthis is not a setting\n")

    error = only_error(path)

    assert error.source == str(path)
    assert error.reason.startswith("line 3: not a 'key = value' line")
    assert str(error).startswith(f"{path}: line 3")


def test_setting_before_any_section(tmp_path: Path) -> None:
    error = only_error(write_ini(tmp_path, "concurrency = 4\n"))

    assert "line 1: a setting before any [section] header" in str(error)


def test_duplicate_key(tmp_path: Path) -> None:
    error = only_error(write_ini(tmp_path, "[consumer]\nmode = batch\nmode = sliding\n"))

    assert (error.section, error.key) == ("consumer", "mode")
    assert "line 3: key appears twice" in error.reason


def test_duplicate_section(tmp_path: Path) -> None:
    error = only_error(write_ini(tmp_path, "[http]\n[retry]\n[http]\n"))

    assert error.section == "http"
    assert "section appears twice" in error.reason


# Providers


def test_custom_provider_gets_other_keys_as_options(
    tmp_path: Path, provider_module: str
) -> None:
    path = write_ini(tmp_path, f"""
        [provider]
        type = {provider_module}:Provider
        queue = jobs
        lease_time = 12
        prefetch = 50
    """)

    provider = load_config(path).provider

    assert provider.type == f"{provider_module}:Provider"
    assert provider.options == {"queue": "jobs", "lease_time": "12", "prefetch": "50"}
    assert provider.path is None
    assert provider.lease_time is None
    with pytest.raises(TypeError):
        provider.options["queue"] = "other"  # type: ignore[index]


def test_provider_module_that_does_not_import(tmp_path: Path) -> None:
    path = write_ini(tmp_path, "[provider]\ntype = no_such_pkg_xyz.queues:Provider\n")

    error = only_error(path)

    assert (error.section, error.key) == ("provider", "type")
    assert error.value == "no_such_pkg_xyz.queues:Provider"
    assert "ModuleNotFoundError: No module named 'no_such_pkg_xyz'" in error.reason


def test_provider_class_missing_from_module(tmp_path: Path, provider_module: str) -> None:
    path = write_ini(tmp_path, f"[provider]\ntype = {provider_module}:Missing\n")

    error = only_error(path)

    assert "AttributeError" in error.reason
    assert "Missing" in error.reason
    assert error.value == f"{provider_module}:Missing"


def test_provider_module_that_fails_while_importing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "acfg_broken_provider.py").write_text("raise RuntimeError('boom')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    path = write_ini(tmp_path, "[provider]\ntype = acfg_broken_provider:Provider\n")

    assert "RuntimeError: boom" in only_error(path).reason


def test_provider_import_can_be_deferred(tmp_path: Path) -> None:
    path = write_ini(tmp_path, "[provider]\ntype = no_such_pkg_xyz:Provider\n")

    config = load_config(path, import_provider=False)

    assert config.provider.type == "no_such_pkg_xyz:Provider"


def test_provider_type_typo_suggests_sqlite(tmp_path: Path) -> None:
    error = only_error(write_ini(tmp_path, "[provider]\ntype = sqllite\npath = q.db\n"))

    assert "unknown provider (did you mean 'sqlite'?)" in error.reason
    assert "package.module:Class" in (error.expected or "")


def test_provider_type_that_is_not_an_import_path(tmp_path: Path) -> None:
    error = only_error(write_ini(tmp_path, "[provider]\ntype = pkg.mod:Class:Extra\n"))

    assert error.reason == "not an import path"


def test_import_provider_class_returns_the_class(provider_module: str) -> None:
    found = settings.import_provider_class(f"{provider_module}:Provider")

    assert found.__name__ == "Provider"


# Cross-key checks


def test_backoff_max_below_backoff_base(tmp_path: Path) -> None:
    path = write_ini(tmp_path, "[retry]\nbackoff_base = 10\nbackoff_max = 5\n")

    error = only_error(path)

    assert (error.key, error.value) == ("backoff_max", "5")
    assert "smaller than backoff_base (10)" in error.reason


def test_backoff_base_above_the_default_max(tmp_path: Path) -> None:
    error = only_error(write_ini(tmp_path, "[retry]\nbackoff_base = 600\n"))

    assert (error.key, error.value) == ("backoff_base", "600")
    assert "larger than backoff_max (300" in error.reason


def test_backoff_max_equal_to_base_is_fine(tmp_path: Path) -> None:
    path = write_ini(tmp_path, "[retry]\nbackoff_base = 7\nbackoff_max = 7\n")

    assert load_config(path).retry.backoff_max == 7.0


@pytest.mark.parametrize("word", ["0", "none", "None", "0.0"])
def test_no_timeout_refused_without_allow_no_timeout(tmp_path: Path, word: str) -> None:
    error = only_error(write_ini(tmp_path, f"[http]\nread_timeout = {word}\n"))

    assert (error.section, error.key, error.value) == ("http", "read_timeout", word)
    assert "allow_no_timeout = true" in error.reason


@pytest.mark.parametrize("word", ["0", "none"])
def test_no_timeout_allowed_with_allow_no_timeout(tmp_path: Path, word: str) -> None:
    path = write_ini(tmp_path, f"""
        [http]
        allow_no_timeout = true
        connect_timeout = {word}
        read_timeout = 12
    """)

    http = load_config(path).http

    assert http.connect_timeout is None
    assert http.read_timeout == 12.0


def test_bad_allow_no_timeout_does_not_add_timeout_errors(tmp_path: Path) -> None:
    path = write_ini(tmp_path, "[http]\nallow_no_timeout = perhaps\nconnect_timeout = 0\n")

    assert only_error(path).key == "allow_no_timeout"


def test_missing_ca_bundle(tmp_path: Path) -> None:
    error = only_error(write_ini(tmp_path, "[http]\nverify = certs/ca.pem\n"))

    assert (error.key, error.value) == ("verify", "certs/ca.pem")
    assert "no CA bundle file exists" in error.reason


def test_ca_bundle_that_is_a_directory(tmp_path: Path) -> None:
    (tmp_path / "certs").mkdir()

    error = only_error(write_ini(tmp_path, "[http]\nverify = certs\n"))

    assert "not a file" in error.reason


def test_ca_bundle_relative_to_the_ini(tmp_path: Path) -> None:
    (tmp_path / "certs").mkdir()
    (tmp_path / "certs" / "ca.pem").write_text("pem", encoding="utf-8")

    config = load_config(write_ini(tmp_path, "[http]\nverify = certs/ca.pem\n"))

    assert config.http.verify == tmp_path / "certs" / "ca.pem"


# Environment variables


def test_variable_is_expanded(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ACFG_WORKERS", "32")
    path = write_ini(tmp_path, "[consumer]\nconcurrency = ${ACFG_WORKERS}\n")

    assert load_config(path).consumer.concurrency == 32


def test_variable_inside_a_longer_value(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ACFG_VERSION", "2.1")
    path = write_ini(tmp_path, "[http]\nuser_agent = bot/${ACFG_VERSION} (ops)\n")

    assert load_config(path).http.user_agent == "bot/2.1 (ops)"


def test_default_used_when_variable_is_unset(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("ACFG_UNSET", raising=False)
    path = write_ini(tmp_path, "[consumer]\nmode = ${ACFG_UNSET:-batch}\n")

    assert load_config(path).consumer.mode == "batch"


def test_default_used_when_variable_is_empty(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ACFG_EMPTY", "")
    path = write_ini(tmp_path, "[consumer]\nmode = ${ACFG_EMPTY:-batch}\n")

    assert load_config(path).consumer.mode == "batch"


def test_set_variable_wins_over_default(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ACFG_MODE", "batch")
    path = write_ini(tmp_path, "[consumer]\nmode = ${ACFG_MODE:-sliding}\n")

    assert load_config(path).consumer.mode == "batch"


def test_missing_variable_names_variable_section_and_key(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("ACFG_MISSING", raising=False)
    path = write_ini(tmp_path, "[http]\nuser_agent = bot/${ACFG_MISSING}\n")

    error = only_error(path)

    assert (error.section, error.key) == ("http", "user_agent")
    assert "environment variable ACFG_MISSING is not set" in error.reason
    assert "${ACFG_MISSING:-default}" in (error.expected or "")


def test_double_dollar_is_a_literal_dollar(tmp_path: Path) -> None:
    path = write_ini(tmp_path, "[http]\nuser_agent = costs $$5, $$$$ is two\n")

    assert load_config(path).http.user_agent == "costs $5, $$ is two"


def test_lone_dollar_is_kept(tmp_path: Path) -> None:
    path = write_ini(tmp_path, "[http]\nuser_agent = a$b $\n")

    assert load_config(path).http.user_agent == "a$b $"


def test_escaped_reference_is_not_expanded(tmp_path: Path) -> None:
    path = write_ini(tmp_path, "[http]\nuser_agent = $${HOME}\n")

    assert load_config(path).http.user_agent == "${HOME}"


def test_expanded_value_is_not_expanded_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ACFG_RAW", "${HOME}")
    path = write_ini(tmp_path, "[http]\nuser_agent = ${ACFG_RAW}\n")

    assert load_config(path).http.user_agent == "${HOME}"


@pytest.mark.parametrize(("text", "reason"), [
    ("${ACFG_X", "unterminated ${"),
    ("${}", "bad variable reference ${}"),
    ("${1ABC}", "bad variable reference ${1ABC}"),
    ("${A-B}", "bad variable reference ${A-B}"),
])
def test_malformed_reference(tmp_path: Path, text: str, reason: str) -> None:
    error = only_error(write_ini(tmp_path, f"[http]\nuser_agent = {text}\n"))

    assert reason in error.reason
    assert error.value == text


def test_bad_expanded_value_shows_where_it_came_from(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ACFG_WORKERS", "lots")
    path = write_ini(tmp_path, "[consumer]\nconcurrency = ${ACFG_WORKERS}\n")

    error = only_error(path)

    assert error.value == "lots"
    assert "expanded from '${ACFG_WORKERS}'" in error.reason


def test_custom_provider_options_are_expanded(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, provider_module: str
) -> None:
    monkeypatch.setenv("ACFG_PASS", "s3cret")
    path = write_ini(tmp_path, f"""
        [provider]
        type = {provider_module}:Provider
        url = amqp://bot:${{ACFG_PASS}}@mq:5672/
    """)

    assert load_config(path).provider.options["url"] == "amqp://bot:s3cret@mq:5672/"


# Paths


def test_relative_paths_start_at_the_ini_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    elsewhere = tmp_path / "cwd"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    conf_dir = tmp_path / "etc"
    conf_dir.mkdir()
    for directory in (conf_dir / "data", tmp_path / "out", conf_dir / "logs"):
        directory.mkdir()
    path = write_ini(conf_dir, """
        [provider]
        path = data/queue.db
        [results]
        path = ../out/results.jsonl
        [logging]
        file = logs/worker.log
    """)

    config = load_config(path)

    assert config.provider.path == conf_dir / "data" / "queue.db"
    assert config.results.path == conf_dir / ".." / "out" / "results.jsonl"
    assert config.logging.file == conf_dir / "logs" / "worker.log"


def test_relative_ini_path_still_resolves_against_its_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "etc").mkdir()
    write_ini(tmp_path / "etc", "[provider]\npath = q.db\n")
    monkeypatch.chdir(tmp_path)

    config = load_config("etc/worker.ini")

    assert config.source == "etc/worker.ini"
    assert config.provider.path == tmp_path / "etc" / "q.db"


def test_absolute_path_is_kept(tmp_path: Path) -> None:
    (tmp_path / "etc").mkdir()
    target = tmp_path / "elsewhere" / "r.jsonl"
    target.parent.mkdir()
    path = write_ini(tmp_path / "etc", f"[results]\npath = {target}\n")

    assert load_config(path).results.path == target


def test_parse_config_uses_the_given_base_dir(tmp_path: Path) -> None:
    config = parse_config("[logging]\nfile = w.log\n", "inline", tmp_path)

    assert config.logging.file == tmp_path / "w.log"
    assert config.provider.path == tmp_path / "var" / "queue.sqlite3"
    assert config.source == "inline"


# describe()


def test_describe_lists_the_settings_in_force(tmp_path: Path) -> None:
    config = load_config(write_ini(tmp_path, "[consumer]\nconcurrency = 3\n"))

    described = config.describe()

    assert described["source"] == str(tmp_path / "worker.ini")
    assert described["consumer"]["concurrency"] == 3
    assert described["provider"]["path"] == str(tmp_path / "var" / "queue.sqlite3")
    assert described["logging"]["file"] is None
    assert set(described) == {"source", *settings.SETTINGS.sections()}
    json.dumps(described)


def test_describe_redacts_secrets(tmp_path: Path, provider_module: str) -> None:
    path = write_ini(tmp_path, f"""
        [provider]
        type = {provider_module}:Provider
        url = amqp://bot:hunter2@mq.internal:5672/jobs
        password = hunter3
        api_key = abc123
        auth_token = t0k
        queue = jobs
    """)
    config = load_config(path)

    options = config.describe()["provider"]["options"]

    assert options["url"] == "amqp://bot:***@mq.internal:5672/jobs"
    assert options["password"] == "***"
    assert options["api_key"] == "***"
    assert options["auth_token"] == "***"
    assert options["queue"] == "jobs"
    assert "hunter" not in json.dumps(config.describe())
    assert config.provider.options["password"] == "hunter3"


@pytest.mark.parametrize(("value", "shown"), [
    ("redis://:pw@cache:6379/0", "redis://:***@cache:6379/0"),
    ("amqp://user@host/", "amqp://user@host/"),
    ("https://host/path?a=b", "https://host/path?a=b"),
    ("amqp://u:p@ss@h1/,amqp://u:q@h2/", "amqp://u:***@h1/,amqp://u:***@h2/"),
])
def test_redact_url_passwords(value: str, shown: str) -> None:
    assert redact("url", value) == shown


# Several errors at once


def test_all_errors_of_a_file_are_reported_together(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("ACFG_MISSING", raising=False)
    path = write_ini(tmp_path, """
        [consumer]
        concurrency = abc
        mode = fast
        [retry]
        jitter = 2
        backoff_base = 9
        backoff_max = 3
        [logging]
        level = ${ACFG_MISSING}
        [extra]
        a = 1
    """)

    failure = load_errors(path)

    located = [(error.section, error.key) for error in failure.errors]
    assert located == [
        ("extra", None),
        ("consumer", "concurrency"),
        ("consumer", "mode"),
        ("retry", "jitter"),
        ("logging", "level"),
        ("retry", "backoff_max"),
    ]
    lines = str(failure).splitlines()
    assert lines[0] == f"{path}: 6 configuration errors"
    assert lines[1:] == [str(error) for error in failure.errors]
    assert isinstance(failure, ConfigError)
    assert failure.source == str(path)


def test_single_error_message_is_just_that_error(tmp_path: Path) -> None:
    failure = load_errors(write_ini(tmp_path, "[retry]\nmax_attempts = 0\n"))

    assert str(failure) == str(failure.errors[0])


# Import hygiene


def test_config_imports_only_the_standard_library() -> None:
    code = (
        "import sys, async_consumer.config, async_consumer.settings\n"
        "bad = {'gevent', 'requests', 'loguru', 'urllib3'} & set(sys.modules)\n"
        "print(sorted(bad))\n"
    )

    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    )

    assert result.stdout.strip() == "[]"


# -- broker providers ----------------------------------------------------------------

def test_a_rabbitmq_provider_gets_its_defaults_and_no_sqlite_keys(tmp_path: Path) -> None:
    config = load_config(write_ini(tmp_path, "[provider]\ntype = rabbitmq\n"))

    assert config.provider.broker_url == "amqp://guest:guest@127.0.0.1:5672/%2F"
    assert config.provider.queue == "async_consumer"
    assert config.provider.prefetch == 0
    assert config.provider.heartbeat == 30.0
    assert config.provider.path is None and config.provider.poll_timeout is None


def test_a_redis_provider_reads_its_url_from_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("REDIS_PASSWORD", "hunter2")
    ini = "[provider]\ntype = redis\nurl = redis://:${REDIS_PASSWORD}@127.0.0.1:6379/3\n"

    config = load_config(write_ini(tmp_path, ini))

    assert config.provider.url == "redis://:hunter2@127.0.0.1:6379/3"
    assert "hunter2" not in str(config.describe())


def test_a_key_of_another_provider_type_is_refused_naming_the_valid_ones(
    tmp_path: Path
) -> None:
    with pytest.raises(ConfigError) as caught:
        load_config(write_ini(tmp_path, "[provider]\ntype = redis\nprefetch = 10\n"))

    assert "[provider] prefetch: unknown key" in str(caught.value)
    assert "for type = redis one of:" in str(caught.value)


def test_a_redis_socket_timeout_not_above_the_poll_timeout_is_refused(tmp_path: Path) -> None:
    ini = "[provider]\ntype = redis\nsocket_timeout = 2\npoll_timeout = 5\n"

    with pytest.raises(ConfigError) as caught:
        load_config(write_ini(tmp_path, ini))

    assert "socket_timeout must exceed poll_timeout" in str(caught.value)
    assert "expected socket_timeout >= 6" in str(caught.value)


@pytest.mark.parametrize("section, key", [
    ("provider", "path"), ("results", "path"), ("logging", "file"),
])
def test_a_file_in_a_missing_directory_is_refused_not_created(
    tmp_path: Path, section: str, key: str
) -> None:
    ini = write_ini(tmp_path, f"[{section}]\n{key} = nowhere/deeper/file\n")

    with pytest.raises(ConfigError) as caught:
        load_config(ini)

    assert f"[{section}] {key}: directory" in str(caught.value)
    assert "does not exist" in str(caught.value)
    assert not (tmp_path / "nowhere").exists()


def test_underscores_in_whole_numbers_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not a whole number"):
        load_config(write_ini(tmp_path, "[consumer]\nconcurrency = 1_0\n"))


def test_a_queue_name_too_long_for_its_delay_queues_is_refused(tmp_path: Path) -> None:
    ini = f"[provider]\ntype = rabbitmq\nqueue = {'q' * 242}\n"

    with pytest.raises(ConfigError, match="is longer than 241 bytes"):
        load_config(write_ini(tmp_path, ini))

    assert load_config(write_ini(tmp_path, f"[provider]\ntype = redis\nqueue = {'q' * 241}\n"))
