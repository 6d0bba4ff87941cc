"""The Redis provider: jobs from a Redis stream, read through a consumer group.

Why a stream with a consumer group rather than a "reliable list" (LMOVE from the
queue into a per-worker processing list):

* The group already records, for every entry a worker took, who holds it, for how
  long it has been idle and how many times it was delivered. With a list, noticing
  that a worker died needs heartbeat keys and a sweeper of our own, and a job that
  kills its worker moves back and forth for ever because nothing counts deliveries.
  Here ``XAUTOCLAIM`` returns a dead worker's entries after ``claim_idle_time``, and
  the delivery counter lets a worker-killing job be dead-lettered once its deliveries
  exceed ``max_attempts`` (plus the grace for lost deliveries the SQLite queue uses).
* ``XREADGROUP COUNT n`` takes exactly the consumer's free slots in one round trip
  and blocks server-side with a finite timeout; ``BLMOVE`` moves one job per call.
* An acknowledgement names the entry id. ``XACK`` is idempotent and tells whether
  the entry was still pending, so an acknowledgement whose reply was lost can be
  sent again safely. ``LREM`` on a processing list matches by value: duplicates
  are ambiguous and the search is O(n).
* Many workers share one group without coordinating; the server shares the work.

Keys, for ``queue = Q``: the stream ``Q`` with the consumer group ``Q`` (created
from id 0 with MKSTREAM, idempotently); ``Q:delayed``, a sorted set of retries
(score: the Redis server's clock when they are due; member: the entry re-encoded
as JSON); ``Q:dead``, a stream of dead letters. An entry has the fields ``id`` (the
job id), ``payload``, ``attempts`` (attempts spent before this copy, 0 when
published) and ``max_attempts``. Each worker is one consumer named host:pid:token.

The attempt an entry is on is ``attempts`` plus its delivery count: a delivery
whose worker died counts as spent, as in the SQLite queue.

Every outcome is applied by one Lua script that starts with ``XACK`` and does
nothing more unless the entry was still pending; then, in the same atomic step, it
deletes the entry and adds the retry to ``Q:delayed``, the requeued copy (attempts
unspent) to the stream, or the dead letter to ``Q:dead``. A bare ``MULTI`` would be
atomic as well, but replaying it after a lost reply would add a second requeued
copy or dead letter; the ``XACK`` guard makes a replay a no-op. Outcomes are buffered and
applied by a flusher greenlet every 50 ms, after their result lines are written,
as the SQLite provider does.

Connections: blocking reads, claims and the recovery scan run on one dedicated
connection owned by the fetch path; acknowledgements, promotion of due retries and
counts use a separate pool, so a blocked ``XREADGROUP`` never delays an
acknowledgement. Both have a socket timeout, TCP keepalive and a health check, and
reads always use a finite ``BLOCK``: a read without a socket timeout would hang for
ever on a connection that dropped silently. redis-py's own retries are off; a lost
connection is one outage, logged once at WARNING when it starts and once at INFO
when it ends, retried with a backoff capped at ``reconnect_max``.

A read whose reply was lost with the connection leaves entries pending in this
worker's name that it never saw; after any failed read (and every claim interval)
the worker looks in its own pending list and takes them back at once, instead of
waiting claim_idle_time for another worker to claim them.

Outcomes whose acknowledgement failed stay buffered (their result lines are already
written) and are applied again after the reconnection. If the worker stops before
Redis is back, their entries stay pending and another worker claims them after
``claim_idle_time``: they run again and their result lines appear twice.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import socket
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any, NamedTuple

import gevent
import gevent.event
import gevent.lock
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from . import settings as s
from .backoff import Backoff
from .config import Config, redact
from .delivery import (
    Action,
    Decision,
    DeliveryCounts,
    admit,
    decide,
    given_up,
    undeliverable,
)
from .errors import ConfigError, QueueError
from .jobs import JobError
from .logs import Log, as_log
from .producer import Message, Publisher
from .promise import Promise
from .provider import Provider, Transformer
from .results import ResultsFile

DEFAULT_FLUSH_INTERVAL_SECONDS = 0.05
#: A buffer this large wakes the housekeeper at once; also the most outcomes one
#: script applies.
FLUSH_BATCH_SIZE = 500
#: How often due retries are moved from the delayed set back into the stream.
PROMOTE_INTERVAL_SECONDS = 0.2
PROMOTE_BATCH_SIZE = 500
#: Idle entries are looked for this many times per claim_idle_time, within bounds.
CLAIM_CHECKS_PER_IDLE_TIME = 8
CLAIM_INTERVAL_MIN_SECONDS = 0.5
CLAIM_INTERVAL_MAX_SECONDS = 30.0
#: The first pause before reconnecting; it doubles up to reconnect_max.
RECONNECT_FIRST_SECONDS = 0.1
#: A loss this soon after a recovery continues the same outage in the log.
OUTAGE_QUIET_SECONDS = 10.0
#: close() tries this many times to apply what finished before giving up on Redis.
CLOSE_ACK_ATTEMPTS = 3
REQUEUE_DEAD_BATCH_SIZE = 500

#: Errors that mean "Redis is not reachable right now", not "this request is wrong".
OUTAGE_ERRORS = (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError,
                 redis.exceptions.ReadOnlyError)

FETCH = "fetch"
WRITE = "write"

#: Makes the client for a role ("reader" or "writer"); tests wrap the client here.
ClientFactory = Callable[[str], "redis.Redis"]

#: ARGV[1] = group, ARGV[2] = n, then the entry ids of n plain acknowledgements (the
#: common outcome, one value each), then 7 values per other outcome: action, entry
#: id, then up to five action-specific values. Nothing happens to an entry unless
#: XACK says it was pending.
SETTLE_SCRIPT = """
local stream, delayed, dead = KEYS[1], KEYS[2], KEYS[3]
local group = ARGV[1]
local acks = tonumber(ARGV[2])
local applied = 0
for i = 3, acks + 2 do
  if redis.call('XACK', stream, group, ARGV[i]) == 1 then
    redis.call('XDEL', stream, ARGV[i])
    applied = applied + 1
  end
end
local clock = redis.call('TIME')
local now = tonumber(clock[1]) + tonumber(clock[2]) / 1000000
for i = acks + 3, #ARGV, 7 do
  local action, entry = ARGV[i], ARGV[i + 1]
  if redis.call('XACK', stream, group, entry) == 1 then
    redis.call('XDEL', stream, entry)
    if action == 'retry' then
      local due = string.format('%.3f', now + tonumber(ARGV[i + 2]))
      redis.call('ZADD', delayed, due, ARGV[i + 3])
    elseif action == 'requeue' then
      redis.call('XADD', stream, '*', 'id', ARGV[i + 2], 'payload', ARGV[i + 3],
                 'attempts', ARGV[i + 4], 'max_attempts', ARGV[i + 5])
    elseif action == 'dead' then
      redis.call('XADD', dead, '*', 'id', ARGV[i + 2], 'payload', ARGV[i + 3],
                 'attempts', ARGV[i + 4], 'max_attempts', ARGV[i + 5],
                 'reason', ARGV[i + 6], 'died_at', string.format('%.3f', now),
                 'entry', entry)
    end
    applied = applied + 1
  end
end
return applied
"""

#: Moves due members of the delayed set back to the stream; an unreadable member
#: goes to the dead letters rather than blocking the set. Returns how many moved and
#: the milliseconds until the next member is due (-1: none left).
PROMOTE_SCRIPT = """
local delayed, stream, dead = KEYS[1], KEYS[2], KEYS[3]
local clock = redis.call('TIME')
local now = clock[1] .. '.' .. string.format('%06d', tonumber(clock[2]))
local due = redis.call('ZRANGEBYSCORE', delayed, '-inf', now, 'LIMIT', 0,
                       tonumber(ARGV[1]))
for _, member in ipairs(due) do
  local ok, job = pcall(cjson.decode, member)
  if ok and type(job) == 'table' and type(job.payload) == 'string' then
    redis.call('XADD', stream, '*', 'id', tostring(job.id), 'payload', job.payload,
               'attempts', tostring(job.attempts), 'max_attempts',
               tostring(job.max_attempts))
  else
    redis.call('XADD', dead, '*', 'id', '', 'payload', member, 'attempts', '0',
               'max_attempts', '0', 'reason', 'unreadable member of the delayed set',
               'died_at', now)
  end
  redis.call('ZREM', delayed, member)
end
local next_due = redis.call('ZRANGE', delayed, 0, 0, 'WITHSCORES')
local wait_ms = -1
if #next_due == 2 then
  wait_ms = math.max(math.floor((tonumber(next_due[2]) - tonumber(now)) * 1000), 0)
end
return {#due, wait_ms}
"""

#: Forgets consumers (stopped workers) that hold nothing and were idle long enough;
#: checked and deleted in one step, so a consumer that just took entries is kept.
PRUNE_SCRIPT = """
local removed = 0
for _, consumer in ipairs(redis.call('XINFO', 'CONSUMERS', KEYS[1], ARGV[1])) do
  local info = {}
  for i = 1, #consumer, 2 do info[consumer[i]] = consumer[i + 1] end
  if info['pending'] == 0 and info['idle'] > tonumber(ARGV[2])
      and info['name'] ~= ARGV[3] then
    redis.call('XGROUP', 'DELCONSUMER', KEYS[1], ARGV[1], info['name'])
    removed = removed + 1
  end
end
return removed
"""

#: ARGV[1] = 'all' with ARGV[2] the newest ref to take and ARGV[3] a batch size,
#: or 'refs' followed by refs. Each dead letter goes back with attempts 0.
REQUEUE_DEAD_SCRIPT = """
local stream, dead = KEYS[1], KEYS[2]
local refs = {}
if ARGV[1] == 'all' then
  for _, item in ipairs(redis.call('XRANGE', dead, '-', ARGV[2], 'COUNT',
                                   tonumber(ARGV[3]))) do
    table.insert(refs, item[1])
  end
else
  for i = 2, #ARGV do table.insert(refs, ARGV[i]) end
end
local moved = 0
for _, ref in ipairs(refs) do
  local found = redis.call('XRANGE', dead, ref, ref)
  if #found == 1 then
    local fields, job = found[1][2], {}
    for i = 1, #fields, 2 do job[fields[i]] = fields[i + 1] end
    redis.call('XADD', stream, '*', 'id', job['id'] or '', 'payload', job['payload'] or '',
               'attempts', '0', 'max_attempts', job['max_attempts'] or '0')
    redis.call('XDEL', dead, ref)
    moved = moved + 1
  end
end
return moved
"""


# -- settings and keys -------------------------------------------------------------------

@dataclass(frozen=True)
class RedisOptions:
    """What the provider and the publisher need from ``[provider]`` and friends."""

    url: str = s.DEFAULT_BROKER_URLS[s.PROVIDER_REDIS]
    queue: str = s.DEFAULT_QUEUE_NAME
    claim_idle_time: float = s.DEFAULT_CLAIM_IDLE_TIME_SECONDS
    poll_timeout: float = s.DEFAULT_POLL_TIMEOUT_SECONDS
    socket_timeout: float = s.DEFAULT_SOCKET_TIMEOUT_SECONDS
    reconnect_max: float = s.DEFAULT_RECONNECT_MAX_SECONDS
    #: For entries published without their own max_attempts.
    max_attempts: int = s.DEFAULT_MAX_ATTEMPTS
    #: The consumer's max_batch_collect_time: reads stay non-blocking this long after
    #: a read that found work, so a half-collected batch is not held back.
    collect_time: float = s.DEFAULT_MAX_BATCH_COLLECT_TIME_SECONDS

    @classmethod
    def from_config(cls, config: Config) -> RedisOptions:
        provider = config.provider
        return cls(
            url=provider.broker_url,
            queue=provider.queue or s.DEFAULT_QUEUE_NAME,
            claim_idle_time=_or(provider.claim_idle_time, s.DEFAULT_CLAIM_IDLE_TIME_SECONDS),
            poll_timeout=_or(provider.poll_timeout, s.DEFAULT_POLL_TIMEOUT_SECONDS),
            socket_timeout=_or(provider.socket_timeout, s.DEFAULT_SOCKET_TIMEOUT_SECONDS),
            reconnect_max=_or(provider.reconnect_max, s.DEFAULT_RECONNECT_MAX_SECONDS),
            max_attempts=config.retry.max_attempts,
            collect_time=config.consumer.max_batch_collect_time,
        )

    @property
    def masked_url(self) -> str:
        """The URL fit for a log line: any password is replaced."""
        return redact("url", self.url)

    @property
    def claim_interval(self) -> float:
        """How often idle entries are looked for: often enough that a dead worker's
        entries come back soon after claim_idle_time, rarely enough to cost nothing."""
        interval = self.claim_idle_time / CLAIM_CHECKS_PER_IDLE_TIME
        return min(max(interval, CLAIM_INTERVAL_MIN_SECONDS), CLAIM_INTERVAL_MAX_SECONDS)


@dataclass(frozen=True)
class Keys:
    """The names one queue uses; the group is named like the stream."""

    stream: str
    delayed: str
    dead: str

    @property
    def group(self) -> str:
        return self.stream

    @classmethod
    def for_queue(cls, queue: str) -> Keys:
        return cls(queue, f"{queue}:delayed", f"{queue}:dead")


def connect(options: RedisOptions, name: str, single_connection: bool = False) -> redis.Redis:
    """A client that fails fast and never retries on its own.

    redis-py's built-in retries would resend a command whose reply was lost (a second
    XADD of the same job) and would hide the outage from the provider's single log
    line; the provider retries with its own backoff instead.
    """
    try:
        return redis.Redis.from_url(
            options.url,
            socket_timeout=options.socket_timeout,
            socket_connect_timeout=options.socket_timeout,
            socket_keepalive=True,
            health_check_interval=max(1, int(options.socket_timeout)),
            retry=Retry(NoBackoff(), 0),
            single_connection_client=single_connection,
            client_name=name,
        )
    except ValueError as error:
        raise ConfigError(
            f"not a Redis URL: {error}", section="provider", key="url",
            value=options.masked_url, expected="redis://[:password@]host:port/db",
        ) from None


def ensure_group(client: redis.Redis, keys: Keys) -> None:
    """Create the stream and its group if missing; from id 0, so that jobs published
    before the first worker started are delivered too."""
    try:
        client.xgroup_create(keys.stream, keys.group, id="0", mkstream=True)
    except redis.exceptions.ResponseError as error:
        if "BUSYGROUP" not in str(error):
            raise


# -- one entry ---------------------------------------------------------------------------

@dataclass
class _Entry:
    """A stream entry as this worker holds it."""

    entry_id: str
    key: str
    payload: bytes
    attempts: int
    max_attempts: int
    deliveries: int = 1
    text: str = ""
    problem: str | None = None

    @property
    def attempt(self) -> int:
        """This delivery's attempt: the copy's spent attempts plus its deliveries."""
        return self.attempts + self.deliveries

    def retry_member(self) -> str:
        """The delayed-set member: the entry with this attempt spent. The entry id
        keeps two identical jobs from collapsing into one member."""
        return json.dumps({
            "id": self.key, "payload": self.text, "attempts": str(self.attempt),
            "max_attempts": str(self.max_attempts), "from": self.entry_id,
        }, ensure_ascii=False, separators=(",", ":"))


def _parse_entry(entry_id: bytes, fields: dict[bytes, bytes] | None,
                 default_max_attempts: int, deliveries: int = 1) -> _Entry:
    """Read an entry without trusting it: a malformed one is marked, not raised, so
    that it is dead-lettered instead of failing the whole batch it came in."""
    fields = fields or {}
    entry_text = _text(entry_id)
    entry = _Entry(
        entry_id=entry_text,
        key=_text(fields.get(b"id")) or entry_text,
        payload=fields.get(b"payload", b""),
        attempts=_whole(fields.get(b"attempts"), 0),
        max_attempts=_whole(fields.get(b"max_attempts"), default_max_attempts),
        deliveries=deliveries,
    )
    entry.problem = _entry_problem(fields, entry)
    if entry.problem is None:
        try:
            entry.text = entry.payload.decode("utf-8")
        except UnicodeDecodeError as error:
            entry.problem = f"the payload is not UTF-8 text ({error.reason})"
    return entry


def _entry_problem(fields: dict[bytes, bytes], entry: _Entry) -> str | None:
    if b"payload" not in fields:
        return "the entry has no payload field"
    if entry.attempts < 0:
        return f"attempts is not a whole number >= 0: {fields.get(b'attempts')!r}"
    if entry.max_attempts < 1:
        return f"max_attempts is not a whole number >= 1: {fields.get(b'max_attempts')!r}"
    return None


def _whole(value: bytes | None, default: int) -> int:
    """An integer field; -1 (refused by the caller) when present but unreadable."""
    if value is None:
        return default
    try:
        return int(value)
    except ValueError:
        return -1


def _text(value: bytes | str | None) -> str:
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    return value.decode("utf-8", "replace")


def _or(value: float | None, default: float) -> float:
    return default if value is None else value


class _Settlement(NamedTuple):
    """An outcome waiting to be applied to Redis (a tuple: one is made per job)."""

    entry: _Entry
    decision: Decision

    def script_args(self) -> list[str | bytes]:
        """The seven values the settle script takes for an outcome other than a plain
        acknowledgement (those are passed as bare entry ids)."""
        entry, decision = self.entry, self.decision
        action = decision.action
        if action is Action.RETRY:
            return ["retry", entry.entry_id, f"{decision.delay_seconds:.3f}",
                    entry.retry_member(), "", "", ""]
        if action is Action.REQUEUE:
            return ["requeue", entry.entry_id, entry.key, entry.payload,
                    str(entry.attempt - 1), str(entry.max_attempts), ""]
        spent = decision.record["attempts"] if decision.record else entry.attempt
        return ["dead", entry.entry_id, entry.key, entry.payload, str(spent),
                str(entry.max_attempts), decision.reason or ""]


# -- outages -----------------------------------------------------------------------------

class _Outage:
    """One loss of Redis, seen by the fetch path, the write path or both.

    It is logged once at WARNING when the first path fails and once at INFO when the
    last failing path works again; the retries in between are DEBUG. Each path waits
    its own capped backoff before it tries again.
    """

    def __init__(self, log: Log, worker: str, url: str, reconnect_max: float) -> None:
        self.log = log
        self.worker = worker
        self.url = url
        self.reconnect_max = reconnect_max
        self.backoff = Backoff(min(RECONNECT_FIRST_SECONDS, reconnect_max), reconnect_max, 0.2)
        self.failures: dict[str, int] = {}
        self.retry_at: dict[str, float] = {}
        self.started: float | None = None
        self.ended = float("-inf")

    @property
    def active(self) -> bool:
        return self.started is not None

    def may_try(self, path: str) -> bool:
        return time.monotonic() >= self.retry_at.get(path, 0.0)

    def failed(self, path: str, error: BaseException) -> None:
        failures = self.failures.get(path, 0) + 1
        self.failures[path] = failures
        delay = self.backoff.delay(failures)
        self.retry_at[path] = time.monotonic() + delay
        if self.started is None:
            self._begin(error)
            return
        self.log.debug("worker {}: redis still unreachable ({} path, try {}): {}: {}; "
                       "next try in {:.2f}s", self.worker, path, failures,
                       type(error).__name__, error, delay)

    def _begin(self, error: BaseException) -> None:
        now = time.monotonic()
        self.started = now
        if now - self.ended < OUTAGE_QUIET_SECONDS:
            self.log.info("worker {}: lost redis {} again ({}: {}); reconnecting",
                          self.worker, self.url, type(error).__name__, error)
            return
        self.log.warning("worker {}: lost redis {} ({}: {}); reconnecting with a backoff "
                         "of up to {:g}s", self.worker, self.url, type(error).__name__,
                         error, self.reconnect_max)

    def succeeded(self, path: str) -> None:
        if path not in self.failures:
            return
        del self.failures[path]
        self.retry_at.pop(path, None)
        if self.failures or self.started is None:
            return
        now = time.monotonic()
        self.log.info("worker {}: redis {} is reachable again after {:.1f}s", self.worker,
                      self.url, now - self.started)
        self.started = None
        self.ended = now


# -- the provider ------------------------------------------------------------------------

class RedisProvider(Provider):
    """Delivers stream entries as promises and applies their outcomes.

    Args:
        options: the connection and timing settings.
        transformer: turns a payload into a promise; a ``ValueError`` (the framework's
            ``JobError`` is one) dead-letters the entry at once.
        results: where final outcomes are written, one line each (optional).
        backoff: the retry schedule.
        logger: a loguru or standard logger.
        flush_interval: seconds between two flushes of finished jobs.
        client_factory: makes the client of a role ("reader", "writer"); by default
            :func:`connect`.
    """

    def __init__(
        self,
        options: RedisOptions,
        transformer: Transformer,
        *,
        results: ResultsFile | None = None,
        backoff: Backoff | None = None,
        logger: Any = None,
        flush_interval: float = DEFAULT_FLUSH_INTERVAL_SECONDS,
        client_factory: ClientFactory | None = None,
    ) -> None:
        self.options = options
        self.keys = Keys.for_queue(options.queue)
        self.transformer = transformer
        self.results = results
        self.backoff = backoff or Backoff()
        self.log = as_log(logger)
        self.flush_interval = flush_interval
        self.consumer = f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(4)}"
        self.counts = DeliveryCounts()
        factory = client_factory or self._default_client
        self.reader = factory("reader")
        self.writer = factory("writer")
        self._settle_script = self.writer.register_script(SETTLE_SCRIPT)
        self._promote_script = self.writer.register_script(PROMOTE_SCRIPT)
        self._prune_script = self.reader.register_script(PRUNE_SCRIPT)
        self._outage = _Outage(self.log, self.consumer, options.masked_url,
                               options.reconnect_max)
        self._in_hand: dict[str, _Entry] = {}
        self._buffer: list[_Settlement] = []
        self._unapplied: list[_Settlement] = []
        self._flush_lock = gevent.lock.Semaphore()
        self._flush_soon = gevent.event.Event()
        self._housekeeper: gevent.Greenlet | None = None
        self._closed = False
        self._group_ready = False
        self._last_found = float("-inf")
        self._own_check_at = 0.0
        self._claim_at = 0.0
        self._claim_cursor = "0-0"
        self._promote_at = 0.0
        self._next_due_at: float | None = None

    @classmethod
    def from_config(
        cls, config: Config, transformer: Transformer, *, results: ResultsFile | None = None,
        backoff: Backoff | None = None, logger: Any = None,
    ) -> RedisProvider:
        """The provider ``async-consumer run`` uses. It does not connect yet: a Redis
        that is down at startup is one outage like any other, not a crash."""
        return cls(RedisOptions.from_config(config), transformer, results=results,
                   backoff=backoff, logger=logger)

    def _default_client(self, role: str) -> redis.Redis:
        return connect(self.options, f"async_consumer:{role}:{self.consumer}",
                       single_connection=role == "reader")

    def describe(self) -> str:
        return (f"redis {self.options.masked_url} stream {self.keys.stream!r} "
                f"as consumer {self.consumer}")

    # -- delivering ------------------------------------------------------------------

    def get(self) -> Promise | None:
        batch = self.get_batch(1)
        return batch[0] if batch else None

    def get_batch(self, max_count: int) -> list[Promise]:
        """Up to ``max_count`` promises: entries lost to this worker first, then entries
        of dead workers, then new ones. A Redis failure returns what was read so far."""
        self._start_housekeeping()
        if max_count < 1 or self._closed or not self._outage.may_try(FETCH):
            return []

        entries: list[_Entry] = []
        try:
            self._prepare_group()
            entries.extend(self._reclaim(max_count))
            if len(entries) < max_count:
                entries.extend(self._read_new(max_count - len(entries), block=not entries))
        except OUTAGE_ERRORS as error:
            self._outage.failed(FETCH, error)
            self._own_check_at = 0.0
        except redis.exceptions.ResponseError as error:
            self._own_check_at = 0.0
            self._on_response_error(error)
        else:
            self._outage.succeeded(FETCH)
        return self._to_promises(entries)

    def _prepare_group(self) -> None:
        if not self._group_ready:
            ensure_group(self.reader, self.keys)
            self._group_ready = True

    def _on_response_error(self, error: redis.exceptions.ResponseError) -> None:
        """A vanished group (the stream was deleted) is made again on the next fetch;
        anything else is a real error for the consumer to log."""
        if "NOGROUP" not in str(error):
            raise error
        self._group_ready = False
        self.log.warning("worker {}: the consumer group of stream {!r} is gone (was the "
                         "stream deleted?); creating it again", self.consumer,
                         self.keys.stream)

    def _read_new(self, count: int, block: bool) -> list[_Entry]:
        """New entries; the read blocks (finitely) only when the stream has been quiet
        for longer than the consumer collects a batch."""
        quiet = time.monotonic() - self._last_found > self.options.collect_time
        block_ms = int(self.options.poll_timeout * 1000) if block and quiet else None
        reply: Any = self.reader.xreadgroup(self.keys.group, self.consumer,
                                            {self.keys.stream: ">"}, count=count,
                                            block=block_ms)
        entries = [
            _parse_entry(entry_id, fields, self.options.max_attempts)
            for _, items in reply or [] for entry_id, fields in items
        ]
        if entries:
            self._last_found = time.monotonic()
        return entries

    def _reclaim(self, count: int) -> list[_Entry]:
        found: list[_Entry] = []
        now = time.monotonic()
        if now >= self._own_check_at:
            found.extend(self._recover_own(count))
        if len(found) < count and now >= self._claim_at:
            found.extend(self._claim_idle(count - len(found)))
        return found

    def _recover_own(self, count: int) -> list[_Entry]:
        """Entries delivered to this consumer whose reply never arrived (a read cut
        short by a lost connection): pending in its name, but not in its hands."""
        rows: Any = self.reader.xpending_range(self.keys.stream, self.keys.group, "-", "+",
                                               count + len(self._in_hand),
                                               consumername=self.consumer)
        lost = [row for row in rows if _text(row["message_id"]) not in self._in_hand][:count]
        more_may_wait = len(lost) == count
        wait = 0.0 if more_may_wait else self.options.claim_interval
        self._own_check_at = time.monotonic() + wait
        entries = [self._fetch_own(_text(row["message_id"]), row["times_delivered"])
                   for row in lost]
        found = [entry for entry in entries if entry is not None]
        if found:
            self.log.info("worker {}: recovered {} entr(ies) delivered to it while the "
                          "connection was failing", self.consumer, len(found))
        return found

    def _fetch_own(self, entry_id: str, deliveries: int) -> _Entry | None:
        items: Any = self.reader.xrange(self.keys.stream, entry_id, entry_id)
        if not items:
            self.reader.xack(self.keys.stream, self.keys.group, entry_id)
            return None
        return _parse_entry(items[0][0], items[0][1], self.options.max_attempts, deliveries)

    def _claim_idle(self, count: int) -> list[_Entry]:
        """Entries another worker took and then left idle past claim_idle_time: it
        died or hung. XAUTOCLAIM scans with a cursor over successive fetches."""
        min_idle_ms = int(self.options.claim_idle_time * 1000)
        reply: Any = self.reader.xautoclaim(self.keys.stream, self.keys.group,
                                            self.consumer, min_idle_ms, self._claim_cursor,
                                            count=count)
        self._claim_cursor = _text(reply[0])
        if self._claim_cursor == "0-0":
            self._claim_at = time.monotonic() + self.options.claim_interval
            self._prune_consumers()

        claimed = [(entry_id, fields) for entry_id, fields in reply[1]
                   if fields is not None and _text(entry_id) not in self._in_hand]
        if not claimed:
            return []
        deliveries = self._delivery_counts([_text(entry_id) for entry_id, _ in claimed])
        self.log.info("worker {}: claimed {} entr(ies) left idle over {:g}s by stopped "
                      "workers", self.consumer, len(claimed), self.options.claim_idle_time)
        return [_parse_entry(entry_id, fields, self.options.max_attempts,
                             deliveries.get(_text(entry_id), 1))
                for entry_id, fields in claimed]

    def _delivery_counts(self, entry_ids: list[str]) -> dict[str, int]:
        rows: Any = self.reader.xpending_range(
            self.keys.stream, self.keys.group, min(entry_ids, key=_id_order),
            max(entry_ids, key=_id_order), len(entry_ids) + len(self._in_hand),
            consumername=self.consumer,
        )
        return {_text(row["message_id"]): row["times_delivered"] for row in rows}

    def _prune_consumers(self) -> None:
        idle_ms = int(self.options.claim_idle_time * 1000)
        removed = self._prune_script(keys=[self.keys.stream],
                                     args=[self.keys.group, idle_ms, self.consumer])
        if removed:
            self.log.debug("worker {}: forgot {} idle consumer(s) holding nothing",
                           self.consumer, removed)

    def _to_promises(self, entries: list[_Entry]) -> list[Promise]:
        promises = []
        for entry in entries:
            if entry.entry_id in self._in_hand:
                continue
            self._in_hand[entry.entry_id] = entry
            promise = self._to_promise(entry)
            if promise is not None:
                promises.append(promise)
        return promises

    def _to_promise(self, entry: _Entry) -> Promise | None:
        if entry.problem is not None:
            self._record(entry, undeliverable(entry.key, entry.attempt,
                                              f"cannot be run: {entry.problem}"))
            return None

        refusal = given_up(entry.key, entry.attempt, entry.max_attempts)
        admitted = refusal or admit(self.transformer, entry.text, entry.key, entry.attempt)
        if isinstance(admitted, Decision):
            self._record(entry, admitted)
            return None

        admitted.receipt = entry
        return admitted

    # -- outcomes --------------------------------------------------------------------

    def settle(self, promise: Promise) -> None:
        entry: _Entry = promise.receipt
        decision = decide(promise, entry.key, entry.attempt, entry.max_attempts, self.backoff)
        self._record(entry, decision)
        if len(self._buffer) >= FLUSH_BATCH_SIZE:
            # The housekeeper writes, not the task: a task never waits for the disk or
            # Redis, and a task cancelled at shutdown can never be inside a flush.
            self._flush_soon.set()

    def _record(self, entry: _Entry, decision: Decision) -> None:
        self.counts.count(decision)
        if decision.action is Action.RETRY:
            self._expect_retry(decision.delay_seconds)
            self.log.debug("worker {}: job {} attempt {}/{} failed; next attempt in {:.2f}s",
                           self.consumer, entry.key, entry.attempt, entry.max_attempts,
                           decision.delay_seconds)
        elif decision.action is Action.REQUEUE:
            self.log.debug("worker {}: job {} goes back to the stream with attempt {} "
                           "unspent", self.consumer, entry.key, entry.attempt)
        elif decision.action is Action.DEAD_LETTER:
            self.log.error("worker {}: job {} dead-lettered: {}", self.consumer, entry.key,
                           decision.reason)
        self._buffer.append(_Settlement(entry, decision))

    # -- flushing --------------------------------------------------------------------

    def flush(self) -> None:
        """Write the buffered result lines, then apply the outcomes to Redis.

        A failed write keeps the buffer and raises, so nothing is acknowledged without
        its result line. A Redis outage keeps the outcomes for the next flush.
        """
        with self._flush_lock:
            self._write_results()
            self._apply(force=False)

    def _write_results(self) -> None:
        if not self._buffer:
            return
        pending, self._buffer = self._buffer, []
        try:
            if self.results is not None:
                self.results.write_many(item.decision.record for item in pending
                                        if item.decision.record is not None)
        except BaseException:
            self._buffer = pending + self._buffer
            raise
        self._unapplied.extend(pending)

    def _apply(self, force: bool) -> bool:
        """Apply written outcomes in batches; ``False`` if Redis could not be reached."""
        while self._unapplied:
            if not force and not self._outage.may_try(WRITE):
                return False
            batch = self._unapplied[:FLUSH_BATCH_SIZE]
            acks = [item.entry.entry_id for item in batch
                    if item.decision.action is Action.ACK]
            args: list[Any] = [self.keys.group, len(acks), *acks]
            for item in batch:
                if item.decision.action is not Action.ACK:
                    args.extend(item.script_args())
            try:
                self._settle_script(keys=[self.keys.stream, self.keys.delayed,
                                          self.keys.dead], args=args)
            except OUTAGE_ERRORS as error:
                self._outage.failed(WRITE, error)
                return False
            self._outage.succeeded(WRITE)
            del self._unapplied[:len(batch)]
            for item in batch:
                self._in_hand.pop(item.entry.entry_id, None)
        return True

    def _start_housekeeping(self) -> None:
        if not self._closed and (self._housekeeper is None or self._housekeeper.dead):
            self._housekeeper = gevent.spawn(self._housekeep)

    def _housekeep(self) -> None:
        """Flush finished jobs and promote due retries, in the background; a failure
        pauses this loop with a growing delay instead of logging every 50 ms."""
        failures = 0
        while not self._closed:
            pause = min(self.flush_interval * (2 ** min(failures, 10)),
                        max(self.options.reconnect_max, self.flush_interval))
            if failures:
                gevent.sleep(pause)
            else:
                self._flush_soon.wait(pause)
            self._flush_soon.clear()
            try:
                self.flush()
                self._promote_if_due()
                failures = 0
            except Exception:
                failures += 1
                self.log.exception("worker {}: could not record {} finished job(s); trying "
                                   "again", self.consumer,
                                   len(self._buffer) + len(self._unapplied))

    def _promote_if_due(self) -> None:
        """Every PROMOTE_INTERVAL_SECONDS (for retries other workers scheduled), or as
        soon as the next known retry is due."""
        now = time.monotonic()
        if now < self._promote_at or not self._outage.may_try(WRITE):
            return
        self._promote_at = now + PROMOTE_INTERVAL_SECONDS
        try:
            moved, wait_ms = self._promote_script(
                keys=[self.keys.delayed, self.keys.stream, self.keys.dead],
                args=[PROMOTE_BATCH_SIZE])
        except OUTAGE_ERRORS as error:
            self._outage.failed(WRITE, error)
            return
        self._outage.succeeded(WRITE)
        self._next_due_at = None if wait_ms < 0 else now + wait_ms / 1000
        if self._next_due_at is not None:
            self._promote_at = min(self._promote_at, self._next_due_at)
        if moved:
            self._promote_at = now
            self.log.debug("worker {}: {} retr(ies) due; back in the stream", self.consumer,
                           moved)

    def _expect_retry(self, delay_seconds: float) -> None:
        """A retry this worker scheduled: promote it on time, and let the consumer know
        before the delayed set has even been read."""
        due = time.monotonic() + delay_seconds
        if self._next_due_at is None or due < self._next_due_at:
            self._next_due_at = due
        self._promote_at = min(self._promote_at, due)

    def seconds_until_ready(self) -> float | None:
        """When the next retry is due, as far as this worker knows (None: none)."""
        if self._next_due_at is None:
            return None
        return max(self._next_due_at - time.monotonic(), 0.0)

    def has_pending_work(self) -> bool:
        """Anything this worker still has to apply, or anything in the stream (new or
        pending with any worker) or in the delayed set. During an outage: yes."""
        self.flush()
        if self._buffer or self._unapplied or self._outage.active:
            return True
        try:
            pipe = self.writer.pipeline(transaction=False)
            pipe.xlen(self.keys.stream)
            pipe.zcard(self.keys.delayed)
            stream_length, delayed = pipe.execute()
        except OUTAGE_ERRORS as error:
            self._outage.failed(WRITE, error)
            return True
        return stream_length + delayed > 0

    def close(self) -> None:
        """Flush what finished (results, then Redis) before closing the connections."""
        if self._closed:
            return

        self._closed = True
        with self._flush_lock:
            self._stop_housekeeper()
            self._write_results()
            self._apply_before_closing()
        unsettled = len(self._in_hand) - len(self._unapplied)
        if unsettled:
            self.log.debug("worker {}: {} entr(ies) never settled stay pending for another "
                           "worker to claim", self.consumer, unsettled)
        self.reader.close()
        self.writer.close()
        if self.results is not None:
            self.results.close()

    def _stop_housekeeper(self) -> None:
        """Called holding the flush lock, so no flush of the housekeeper is under way:
        killing one between the result lines and the acknowledgements would forget
        outcomes whose lines are already written."""
        if self._housekeeper is not None:
            self._housekeeper.kill(block=True, timeout=1)

    def _apply_before_closing(self) -> None:
        for attempt in range(CLOSE_ACK_ATTEMPTS):
            if self._apply(force=True):
                return
            gevent.sleep(min(RECONNECT_FIRST_SECONDS * 2 ** attempt, self.options.reconnect_max))
        self.log.warning(
            "worker {}: {} finished job(s) could not be acknowledged before stopping; "
            "their entries stay pending and another worker runs them again after {:g}s "
            "(their result lines are written, so they will appear twice)",
            self.consumer, len(self._unapplied), self.options.claim_idle_time)


def _id_order(entry_id: str) -> tuple[int, int]:
    milliseconds, _, sequence = entry_id.partition("-")
    return int(milliseconds), int(sequence or 0)


# -- the publisher -----------------------------------------------------------------------

class RedisUnavailable(QueueError):
    """Redis could not be reached, or did not answer within socket_timeout.

    A :class:`QueueError`, so that the command line reports it in one line (exit 1)
    rather than with a traceback. A publish that fails this way may or may not have
    been stored: publishing again can duplicate (at-least-once).
    """


@contextlib.contextmanager
def _reachable(url: str) -> Iterator[None]:
    try:
        yield
    except OUTAGE_ERRORS as error:
        raise RedisUnavailable(f"redis {url} is unavailable ({type(error).__name__}: "
                               f"{error})") from error


class RedisPublisher(Publisher):
    """Publishes jobs to the stream and manages the dead letters, without gevent.

    A lost or silent connection raises :class:`RedisUnavailable`.
    """

    def __init__(self, client: redis.Redis, queue: str, url: str = "redis") -> None:
        self.client = client
        self.keys = Keys.for_queue(queue)
        self.url = url
        self._group_ready = False
        self._requeue_script = client.register_script(REQUEUE_DEAD_SCRIPT)

    @classmethod
    def from_config(cls, config: Config) -> RedisPublisher:
        options = RedisOptions.from_config(config)
        return cls(connect(options, "async_consumer:publisher"), options.queue,
                   options.masked_url)

    def publish_many(self, messages: Iterable[Message]) -> int:
        """All messages in one MULTI/EXEC round trip: all are added or none."""
        batch = list(messages)
        if not batch:
            return 0

        with _reachable(self.url):
            self._prepare_group()
            pipe = self.client.pipeline(transaction=True)
            for job_id, payload, max_attempts in batch:
                pipe.xadd(self.keys.stream, {"id": job_id, "payload": payload,
                                             "attempts": 0, "max_attempts": max_attempts})
            pipe.execute()
        return len(batch)

    def _prepare_group(self) -> None:
        if not self._group_ready:
            ensure_group(self.client, self.keys)
            self._group_ready = True

    def list_dead(self, limit: int = 100) -> list[dict[str, Any]]:
        with _reachable(self.url):
            items: Any = self.client.xrange(self.keys.dead, count=limit)
        return [_dead_letter(ref, fields) for ref, fields in items]

    def requeue_dead(self, refs: list[str] | None = None) -> int:
        """Dead letters back to the stream with attempts 0, each moved atomically.

        ``None`` moves every dead letter that exists when the call starts, in batches,
        so that letters dying meanwhile cannot keep the call going for ever.
        """
        if refs is not None:
            bad = [ref for ref in refs if not _is_entry_id(ref)]
            if bad:
                raise JobError(f"dead-letter refs of a redis queue are stream ids like "
                               f"1700000000000-0, not {', '.join(bad)}")
        with _reachable(self.url):
            self._prepare_group()
            if refs is not None:
                keys = [self.keys.stream, self.keys.dead]
                return int(self._requeue_script(keys=keys, args=["refs", *refs])) if refs else 0
            return self._requeue_all()

    def _requeue_all(self) -> int:
        """Batches up to the newest letter seen at the start; each batch shrinks that
        finite set, so the loop ends."""
        keys = [self.keys.stream, self.keys.dead]
        newest = self.client.xrevrange(self.keys.dead, count=1)
        if not newest:
            return 0
        moved, last = 0, _text(newest[0][0])
        while True:
            step = int(self._requeue_script(keys=keys,
                                            args=["all", last, REQUEUE_DEAD_BATCH_SIZE]))
            moved += step
            if step < REQUEUE_DEAD_BATCH_SIZE:
                return moved

    def counts(self) -> dict[str, int]:
        """Entries in the stream (waiting or taken), taken but unacknowledged, waiting
        to be retried, and dead."""
        with _reachable(self.url):
            pipe = self.client.pipeline(transaction=False)
            pipe.xlen(self.keys.stream)
            pipe.zcard(self.keys.delayed)
            pipe.xlen(self.keys.dead)
            stream_length, delayed, dead = pipe.execute()
            pending = self._pending()
        return {"stream": stream_length, "pending": pending, "delayed": delayed,
                "dead": dead}

    def _pending(self) -> int:
        try:
            summary = self.client.xpending(self.keys.stream, self.keys.group)
        except redis.exceptions.ResponseError as error:
            if "NOGROUP" in str(error):
                return 0
            raise
        return int(summary["pending"])

    def close(self) -> None:
        self.client.close()


def _dead_letter(ref: bytes, fields: dict[bytes, bytes]) -> dict[str, Any]:
    named = {_text(name): _text(value) for name, value in fields.items()}
    return {
        "ref": _text(ref),
        "id": named.get("id", ""),
        "attempts": _whole(fields.get(b"attempts"), 0),
        "max_attempts": _whole(fields.get(b"max_attempts"), 0),
        "reason": named.get("reason", ""),
        "died_at": float(named["died_at"]) if named.get("died_at") else None,
    }


def _is_entry_id(ref: str) -> bool:
    milliseconds, dash, sequence = ref.partition("-")
    return bool(dash) and milliseconds.isdigit() and sequence.isdigit()
