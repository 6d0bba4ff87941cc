"""RabbitMQ as the job queue: a provider for gevent workers, a publisher for plain code.

Topology, all durable, all reached through the default exchange so that no binding
can be forgotten or left behind:

* ``<queue>``: the jobs. Body: the job's JSON text (UTF-8). Properties: ``message_id``
  = job id, ``delivery_mode`` 2, headers ``x-attempts`` (attempts already spent, 0 at
  publish) and ``x-max-attempts``.
* ``<queue>.retry.<ms>``: delay buckets with ``x-message-ttl`` = ms that dead-letter
  back to ``<queue>``. All messages of a bucket share one TTL, so they expire in
  order at the head; that is why delays are rounded up to a few buckets, created
  when first needed.
* ``<queue>.dead``: dead letters, with headers ``x-reason``, ``x-attempts``,
  ``x-died-at`` and ``x-dead-ref`` (the stable ref ``dead list`` shows).

Attempts. A retry, a shutdown requeue and a dead letter are all new copies published
with publisher confirms, and only then is the original acknowledged. The provider
never asks the broker to requeue (``nack``), so a delivery with the ``redelivered``
flag set means exactly one thing: the channel that held it closed before it was
settled (the worker crashed, or lost its connection). Such a delivery is not run;
its lost attempt is written into a copy (``x-attempts`` + 1) first, so a message
that kills every worker that runs it is dead-lettered, like the sqlite queue does,
after ``max_attempts`` plus ``LOST_DELIVERY_GRACE`` deliveries instead of looping
forever.

Ownership. pika is neither thread- nor greenlet-safe, so under gevent one owner
greenlet holds the ``BlockingConnection`` and its channel: it pumps
``process_data_events`` every few milliseconds (heartbeats included, whatever the
tasks are doing), buffers the deliveries its consumer callback receives, and takes
the outcomes that task greenlets leave from :meth:`settle`.

Group commit. Outcomes are applied in batches, every ``FLUSH_INTERVAL_SECONDS`` or
once a quarter of the prefetch window waits: one write and one fsync of their result
lines, then one flush of their acknowledgements, with a single ``multiple`` frame for
every delivery below the oldest one still unsettled. An acknowledgement still never
leaves before its result line is on disk and its copy (if any) is confirmed.
"""

from __future__ import annotations

import collections
import hashlib
import logging
import math
import os
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, NamedTuple

import gevent
import pika
import pika.exceptions
from gevent.event import AsyncResult, Event
from gevent.queue import Empty, Queue

from .backoff import Backoff
from .config import Config, redact
from .delivery import (
    LOST_DELIVERY_GRACE,
    Action,
    Decision,
    DeliveryCounts,
    admit,
    decide,
    undeliverable,
)
from .errors import ConfigError
from .logs import as_log
from .patching import ensure_cooperative
from .producer import Message, Publisher
from .promise import Promise
from .provider import Provider, Transformer
from .results import ResultsFile
from .settings import (
    DEFAULT_HEARTBEAT_SECONDS,
    DEFAULT_MAX_ATTEMPTS,
    DEFAULT_QUEUE_NAME,
    DEFAULT_RECONNECT_MAX_SECONDS,
)

HEADER_ATTEMPTS = "x-attempts"
HEADER_MAX_ATTEMPTS = "x-max-attempts"
HEADER_REASON = "x-reason"
HEADER_DIED_AT = "x-died-at"
HEADER_DEAD_REF = "x-dead-ref"
#: Headers the broker adds when a bucket dead-letters a message; a copy drops them.
BROKER_HEADER_PREFIXES = ("x-death", "x-first-death", "x-last-death")
PERSISTENT = 2

#: Delay buckets in milliseconds; a delay is rounded up to the next one, so a retry
#: never comes earlier than the backoff or a server's Retry-After asked for.
RETRY_BUCKETS_MS = (100, 250, 500, 1_000, 2_000, 5_000, 10_000, 30_000, 60_000,
                    120_000, 300_000, 600_000, 1_800_000, 3_600_000)

#: The longest one ``process_data_events`` waits while tasks run.
PUMP_SECONDS = 0.01
#: Finished outcomes are written and acknowledged together (one write, one fsync, one
#: flush of acknowledgements) once the oldest has waited this long...
FLUSH_INTERVAL_SECONDS = 0.01
#: ... or once this share of the prefetch window waits, so that outcomes waiting for
#: their acknowledgement never hold back much of the credit new deliveries need.
FLUSH_PREFETCH_SHARE = 4
#: The wait with no task in hand: a delivery ends it at once, and it stays far below
#: half of any heartbeat, so an idle worker costs little CPU and misses nothing.
IDLE_PUMP_SECONDS = 0.2
#: The first pause before reconnecting; it doubles up to ``reconnect_max``.
RECONNECT_FIRST_SECONDS = 0.5
RECONNECT_JITTER = 0.2
#: A long outage is mentioned again this often, never more.
OUTAGE_REMINDER_SECONDS = 300.0
#: A new connection ends an outage only once it has stayed up this long; one that
#: dies sooner is a flap: no new warning, and the next attempt waits its backoff.
STABLE_CONNECTION_SECONDS = 10.0
#: AMQP carries prefetch_count in 16 bits.
MAX_PREFETCH = 65535
#: How long startup waits for the first connection before carrying on without it.
FIRST_CONNECT_WAIT_SECONDS = 20.0
#: How long close() gives the owner to flush and close before giving up on it.
CLOSE_WAIT_SECONDS = 15.0
#: How long a question to the owner (queue depths) may take.
QUERY_WAIT_SECONDS = 10.0
#: After a failed results write, the owner waits this long before writing again.
RESULTS_RETRY_SECONDS = 1.0
#: A connection the broker keeps blocked (memory or disk alarm) is dropped after
#: this many heartbeats, but never sooner than the minimum.
BLOCKED_TIMEOUT_HEARTBEATS = 2
MIN_BLOCKED_TIMEOUT_SECONDS = 30.0
MAX_REASON_CHARS = 2000

#: Errors after which the connection is gone or unusable: reconnect.
OUTAGE_ERRORS: tuple[type[BaseException], ...] = (pika.exceptions.AMQPError, OSError)
#: Errors a first connection meets when the settings, not the network, are wrong.
PERMANENT_ERRORS: tuple[type[BaseException], ...] = (
    pika.exceptions.ProbableAuthenticationError,
    pika.exceptions.ProbableAccessDeniedError,
    pika.exceptions.AuthenticationError,
    pika.exceptions.ChannelClosedByBroker,
)


# -- topology and wire format, shared by the provider and the publisher -----------------


def dead_queue_name(queue: str) -> str:
    return f"{queue}.dead"


def retry_queue_name(queue: str, milliseconds: int) -> str:
    return f"{queue}.retry.{milliseconds}"


def bucket_for(delay_seconds: float) -> int:
    """The bucket (ms) for a delay: the smallest not shorter than it; 0 for no delay."""
    if delay_seconds <= 0:
        return 0

    wanted = math.ceil(delay_seconds * 1000)
    for milliseconds in RETRY_BUCKETS_MS:
        if milliseconds >= wanted:
            return milliseconds
    return RETRY_BUCKETS_MS[-1]


def declare_topology(channel: Any, queue: str) -> None:
    """Declare the job queue and its dead-letter queue; harmless when they exist."""
    channel.queue_declare(queue, durable=True)
    channel.queue_declare(dead_queue_name(queue), durable=True)


def declare_bucket(channel: Any, queue: str, milliseconds: int) -> str:
    """Declare one delay bucket; its expired messages go back to ``queue``."""
    name = retry_queue_name(queue, milliseconds)
    channel.queue_declare(name, durable=True, arguments={
        "x-message-ttl": milliseconds,
        "x-dead-letter-exchange": "",
        "x-dead-letter-routing-key": queue,
    })
    return name


def job_properties(
    job_id: str | None, attempts: int, max_attempts: int,
    headers: dict[str, Any] | None = None,
) -> pika.BasicProperties:
    """Persistent properties carrying the attempt counters."""
    merged = dict(headers or {})
    merged[HEADER_ATTEMPTS] = attempts
    merged[HEADER_MAX_ATTEMPTS] = max_attempts
    return pika.BasicProperties(
        message_id=job_id, delivery_mode=PERSISTENT, content_type="application/json",
        headers=merged,
    )


def publish(channel: Any, routing_key: str, body: bytes,
            properties: pika.BasicProperties) -> None:
    """Publish through the default exchange; ``mandatory`` turns a missing queue into
    an ``UnroutableError`` instead of a silent drop."""
    channel.basic_publish("", routing_key, body, properties, mandatory=True)


def header_int(headers: dict[str, Any] | None, name: str, default: int) -> int:
    """An integer header; a missing or foreign value counts as ``default``."""
    value = (headers or {}).get(name)
    if isinstance(value, bool):
        return default
    try:
        return int(value) if value is not None else default
    except (TypeError, ValueError):
        return default


def message_key(message_id: str | None, body: bytes) -> str:
    """The job id, or a digest of the body for a message published without one."""
    if message_id:
        return str(message_id)
    return "sha1-" + hashlib.sha1(body).hexdigest()[:16]


def own_headers(headers: dict[str, Any] | None) -> dict[str, Any]:
    """A message's headers without those the broker added when dead-lettering."""
    return {name: value for name, value in (headers or {}).items()
            if not name.startswith(BROKER_HEADER_PREFIXES)}


def connection_parameters(url: str, heartbeat: float, name: str) -> pika.URLParameters:
    """pika's parameters for ``url``, with our heartbeat and a blocked-connection limit.

    pika wants whole seconds; a heartbeat is rounded up so it is never shorter than
    asked. The connection name shows in ``rabbitmqctl list_connections``.
    """
    parameters = pika.URLParameters(url)
    parameters.heartbeat = max(1, math.ceil(heartbeat))
    parameters.blocked_connection_timeout = max(
        MIN_BLOCKED_TIMEOUT_SECONDS, BLOCKED_TIMEOUT_HEARTBEATS * heartbeat)
    parameters.connection_attempts = 1
    parameters.client_properties = {"connection_name": name}
    return parameters


def queue_depths(connection: Any, queue: str, buckets: Iterable[int] = ()) -> dict[str, int]:
    """Ready messages in the job queue, the given buckets and the dead queue; consumers.

    Only buckets known to exist are asked about: a passive declare of a missing queue
    closes the channel (404), and AMQP has no way to list queues. The probe runs on a
    scratch channel so that such a close never reaches the worker's own channel.
    """
    channel = connection.channel()
    depths = {"ready": 0, "delayed": 0, "dead": 0, "consumers": 0}
    try:
        main = channel.queue_declare(queue, passive=True).method
        depths["ready"], depths["consumers"] = main.message_count, main.consumer_count
        dead = channel.queue_declare(dead_queue_name(queue), passive=True).method
        depths["dead"] = dead.message_count
        for milliseconds in buckets:
            count, channel = _probe(connection, channel, retry_queue_name(queue, milliseconds))
            depths["delayed"] += count
    finally:
        _close_quietly(channel)
    return depths


def _probe(connection: Any, channel: Any, name: str) -> tuple[int, Any]:
    """A queue's ready count (0 when deleted behind our back) and the channel to go on
    with."""
    try:
        return channel.queue_declare(name, passive=True).method.message_count, channel
    except pika.exceptions.ChannelClosedByBroker as error:
        if error.reply_code != 404:
            raise
        return 0, connection.channel()


def _close_quietly(resource: Any) -> None:
    """Close a channel or connection that may already be dead."""
    try:
        if resource is not None and resource.is_open:
            resource.close()
    except Exception:
        pass


def quiet_pika_logging() -> bool:
    """Silence pika's own log records below CRITICAL, unless someone set its level.

    pika logs every lost connection and failed reconnect at ERROR, often with a
    traceback; routed into the worker's log that turns one outage into a flood. The
    provider reports each of those events itself, once, so pika's copies only add
    noise. Returns whether the level was changed.
    """
    pika_logger = logging.getLogger("pika")
    if pika_logger.level != logging.NOTSET:
        return False
    pika_logger.setLevel(logging.CRITICAL)
    return True


def _masked(url: str) -> str:
    return redact("url", url)


# -- the provider ----------------------------------------------------------------------


class _Delivery(NamedTuple):
    """One message as the owner received it; ``generation`` names its channel.

    Named tuples (here and for outcomes) are immutable like frozen dataclasses and
    several times cheaper to build; one of each is made for every message.
    """

    generation: int
    tag: int
    body: bytes
    key: str
    message_id: str | None
    headers: dict[str, Any]
    attempts: int
    max_attempts: int
    redelivered: bool

    @property
    def spent(self) -> int:
        """Attempts used up, counting the delivery that died if this is a redelivery."""
        return self.attempts + (1 if self.redelivered else 0)


class _Settlement(NamedTuple):
    """What to do with a delivery, and the ``x-attempts`` its copy (if any) carries."""

    delivery: _Delivery
    decision: Decision
    attempts: int


@dataclass(frozen=True)
class _Query:
    """A question only the owner can answer (it needs pika), with its answer slot."""

    ask: Callable[[], Any]
    answer: AsyncResult


class RabbitMQProvider(Provider):
    """Delivers RabbitMQ messages as promises and settles them at-least-once.

    Args:
        url: the broker, ``amqp://user:password@host:port/vhost``.
        queue: the job queue; its retry and dead-letter queues take it as a prefix.
        transformer: turns a body into a promise; a ``ValueError`` (``JobError`` is
            one) dead-letters the message at once.
        results: where final outcomes are written, before their acknowledgement.
        backoff: the retry schedule.
        logger: a loguru or standard logger.
        prefetch: unacknowledged messages this worker may hold (the consumer's
            concurrency: it never holds more than it can start).
        heartbeat: the AMQP heartbeat in seconds.
        reconnect_max: the longest pause between two reconnection attempts.
        default_max_attempts: for messages without an ``x-max-attempts`` header.
    """

    def __init__(
        self,
        url: str,
        queue: str,
        transformer: Transformer,
        *,
        results: ResultsFile | None = None,
        backoff: Backoff | None = None,
        logger: Any = None,
        prefetch: int = 10,
        heartbeat: float = DEFAULT_HEARTBEAT_SECONDS,
        reconnect_max: float = DEFAULT_RECONNECT_MAX_SECONDS,
        default_max_attempts: int = DEFAULT_MAX_ATTEMPTS,
    ) -> None:
        self.url = url
        self.queue = queue
        self.transformer = transformer
        self.results = results
        self.backoff = backoff or Backoff()
        self.log = as_log(logger)
        self.prefetch = min(prefetch, MAX_PREFETCH)
        self.heartbeat = heartbeat
        self.reconnect_max = reconnect_max
        self.default_max_attempts = default_max_attempts
        self.counts = DeliveryCounts()
        self.who = f"worker {os.getpid()} on queue {queue!r}"
        self._parameters = connection_parameters(url, heartbeat, f"async_consumer {self.who}")
        self._reconnect = Backoff(RECONNECT_FIRST_SECONDS, reconnect_max, RECONNECT_JITTER)
        self._requests: Queue = Queue()
        self._outcomes: list[_Settlement] = []
        self._outcomes_since = 0.0
        self._flush_size = max(1, self.prefetch // FLUSH_PREFETCH_SHARE)
        self._ready: collections.deque[_Delivery] = collections.deque()
        self._unacked: set[int] = set()
        self._in_hand = 0
        self._connection: Any = None
        self._channel: Any = None
        self._consumer_tag: str | None = None
        self._generation = 0
        self._buckets: set[int] = set()
        self._known_buckets: set[int] = set()
        self._applying: list[_Settlement] = []
        self._unwritten: list[_Settlement] = []
        self._results_retry_at = 0.0
        self._outage_since: float | None = None
        self._outage_reminded_at = 0.0
        self._failed_connects = 0
        self._connected_at = 0.0
        self._reconnect_at = 0.0
        self._owner: gevent.Greenlet | None = None
        self._first_attempt = Event()
        self._first_error: BaseException | None = None
        self._wake = Event()
        self._closing = False
        self._finished = False
        self._closed = False

    @classmethod
    def from_config(
        cls,
        config: Config,
        transformer: Transformer,
        *,
        results: ResultsFile | None = None,
        backoff: Backoff | None = None,
        logger: Any = None,
    ) -> RabbitMQProvider:
        """The provider ``[provider] type = rabbitmq`` describes, connected or connecting.

        A refused login or a queue declared with other arguments is a ``ConfigError``
        now; an unreachable broker is not: the worker keeps trying in the background.
        """
        section = config.provider
        provider = cls(
            section.broker_url, section.queue or DEFAULT_QUEUE_NAME, transformer,
            results=results, backoff=backoff, logger=logger,
            prefetch=section.prefetch or config.consumer.concurrency,
            heartbeat=section.heartbeat or DEFAULT_HEARTBEAT_SECONDS,
            reconnect_max=section.reconnect_max or DEFAULT_RECONNECT_MAX_SECONDS,
            default_max_attempts=config.retry.max_attempts,
        )
        provider.start(source=config.source)
        return provider

    def start(self, source: str | None = None) -> None:
        """Start the owner greenlet and wait for its first connection attempt.

        The process must be monkey-patched: pika would otherwise block the hub in
        ``epoll`` and every task with it.
        """
        ensure_cooperative()
        if self._owner is not None:
            return
        if quiet_pika_logging():
            self.log.debug("{}: pika's own log records are silenced below CRITICAL; this "
                           "provider reports connection events itself", self.who)

        self._owner = gevent.spawn(self._own)
        self._first_attempt.wait(timeout=FIRST_CONNECT_WAIT_SECONDS)
        error = self._first_error
        if not isinstance(error, PERMANENT_ERRORS):
            return
        self.close()
        if isinstance(error, pika.exceptions.ChannelClosedByBroker):
            raise ConfigError(
                f"the broker refused the queue: {error}", source=source, section="provider",
                key="queue", value=self.queue,
                expected="a queue name whose queues are durable and were declared without "
                "extra arguments",
            ) from error
        raise ConfigError(
            f"the broker refused the worker: {type(error).__name__}: {error}",
            source=source, section="provider", key="url", value=_masked(self.url),
            expected="credentials and a vhost the broker accepts",
        ) from error

    # -- delivering (consumer greenlet) ---------------------------------------------

    def get(self) -> Promise | None:
        batch = self.get_batch(1)
        return batch[0] if batch else None

    def get_batch(self, max_count: int) -> list[Promise]:
        """Hand out buffered deliveries; the broker's prefetch bounds how many exist."""
        if self._owner is None:
            self.start()

        promises: list[Promise] = []
        while len(promises) < max_count and self._ready:
            promise = self._to_promise(self._ready.popleft())
            if promise is not None:
                promises.append(promise)
        self._in_hand += len(promises)
        return promises

    def _to_promise(self, delivery: _Delivery) -> Promise | None:
        """A promise for a delivery, or ``None`` after sending it elsewhere."""
        if delivery.generation != self._generation:
            return None
        if delivery.spent >= delivery.max_attempts + LOST_DELIVERY_GRACE:
            self._submit(delivery, undeliverable(delivery.key, delivery.spent, (
                f"gave up: no outcome after {delivery.spent} deliveries; the worker "
                "stopped or lost the broker during the last")), delivery.spent)
            return None
        if delivery.redelivered:
            self.log.info("job {} came back from a worker that stopped or lost the broker; "
                          "{} of {} attempt(s) now spent, queued again", delivery.key,
                          delivery.spent, delivery.max_attempts)
            self._submit(delivery, Decision(Action.REQUEUE), delivery.spent)
            return None
        return self._transform(delivery)

    def _transform(self, delivery: _Delivery) -> Promise | None:
        attempt = delivery.attempts + 1
        admitted = admit(self.transformer, delivery.body, delivery.key, attempt)
        if isinstance(admitted, Decision):
            self._submit(delivery, admitted, attempt)
            return None

        admitted.receipt = delivery
        return admitted

    # -- outcomes (task greenlets) --------------------------------------------------

    def settle(self, promise: Promise) -> None:
        """Queue the outcome for the owner; the slot is free, the ack follows shortly."""
        delivery: _Delivery = promise.receipt
        attempt = promise.attempt
        decision = decide(promise, delivery.key, attempt, delivery.max_attempts, self.backoff)
        copy_attempts = attempt - 1 if decision.action is Action.REQUEUE else attempt
        self._in_hand = max(self._in_hand - 1, 0)
        self._submit(delivery, decision, copy_attempts)

    def _submit(self, delivery: _Delivery, decision: Decision, attempts: int) -> None:
        self.counts.count(decision)
        if decision.action is Action.DEAD_LETTER:
            self.log.error("job {} dead-lettered: {}", delivery.key, decision.reason)
        elif decision.action is Action.RETRY:
            self.log.debug("job {} attempt {}/{} failed; next attempt in {:.2f}s",
                           delivery.key, attempts, delivery.max_attempts,
                           decision.delay_seconds)
        if not self._outcomes:
            self._outcomes_since = time.monotonic()
        self._outcomes.append(_Settlement(delivery, decision, attempts))

    def has_pending_work(self) -> bool:
        """Whether anything is buffered, unsettled, delayed or still ready in the queue.

        Messages other workers hold unacknowledged are invisible over AMQP, and only
        the delay buckets this process created are looked at, so this answers for
        this worker, the queue's ready messages and its own delayed retries.
        """
        if self._ready or self._in_hand or self._outcomes:
            return True
        if self._applying or self._unwritten:
            return True
        if self._connection is None:
            return True
        try:
            depths = self._ask(self._depths_now)
        except Exception as error:
            self.log.debug("{}: cannot see the queue depths ({}); assuming work is pending",
                           self.who, error)
            return True
        return bool(depths["ready"] or depths["delayed"] or depths["buffered"])

    def _ask(self, question: Callable[[], Any]) -> Any:
        """Have the owner answer ``question`` and wait (cooperatively) for the answer."""
        query = _Query(question, AsyncResult())
        self._requests.put(query)
        return query.answer.get(timeout=QUERY_WAIT_SECONDS)

    def describe(self) -> str:
        return f"rabbitmq:{_masked(self.url)} queue={self.queue} prefetch={self.prefetch}"

    # -- closing --------------------------------------------------------------------

    def close(self) -> None:
        """Flush outcomes (results, then acks), return unstarted messages, disconnect.

        The owner does the work, because only it may touch the channel; close() waits
        for it, within a bound, then closes the results file.
        """
        if self._closed:
            return

        self._closed = True
        self._closing = True
        self._wake.set()
        owner = self._owner
        if owner is not None and not owner.dead:
            owner.join(timeout=CLOSE_WAIT_SECONDS)
            if not owner.dead:
                self.log.warning("{}: the broker connection did not close within {}s; "
                                 "unsettled messages return to the queue", self.who,
                                 CLOSE_WAIT_SECONDS)
                owner.kill(block=True, timeout=1)
        if self._in_hand:
            self.log.warning("{}: {} task(s) never reported an outcome; the broker delivers "
                             "their messages again", self.who, self._in_hand)
        if self.results is not None:
            self.results.close()

    # -- the owner greenlet: the only code that touches pika ------------------------

    def _own(self) -> None:
        """Connect, pump, settle and reconnect until closed; nothing escapes."""
        while not self._finished:
            try:
                if self._connection is None:
                    self._connect_or_wait()
                else:
                    self._pump()
            except OUTAGE_ERRORS as error:
                self._lose_connection(error)
            except Exception as error:
                self.log.exception("{}: unexpected error on the broker connection", self.who)
                self._lose_connection(error)
        self._first_attempt.set()

    def _pump(self) -> None:
        if self._closing:
            self._shut_down()
            return
        self._apply_requests()
        self._connection.process_data_events(time_limit=self._pump_wait())
        self._end_outage_if_stable()

    def _pump_wait(self) -> float:
        busy = self._in_hand or self._ready or self._outcomes or not self._requests.empty()
        return PUMP_SECONDS if busy else IDLE_PUMP_SECONDS

    def _connect_or_wait(self) -> None:
        """One connection attempt, or the wait before it; close() cuts any wait short."""
        if self._closing:
            self._drop_pending("the broker connection is down at shutdown")
            self._finished = True
            return
        pause = self._reconnect_at - time.monotonic()
        if pause > 0:
            self._wake.wait(timeout=pause)
            return

        try:
            self._connect()
        except Exception as error:
            self._note_failed_connect(error)
            self._reconnect_at = time.monotonic() + self._reconnect.delay(self._failed_connects)
        self._first_attempt.set()

    def _connect(self) -> None:
        """Open a connection and a confirming channel, declare, and start consuming.

        A new channel is a new generation: deliveries of an older one are never
        acknowledged on it.
        """
        connection = pika.BlockingConnection(self._parameters)
        try:
            channel = connection.channel()
            declare_topology(channel, self.queue)
            channel.confirm_delivery()
            channel.basic_qos(prefetch_count=self.prefetch)
            connection.add_on_connection_blocked_callback(self._on_blocked)
            connection.add_on_connection_unblocked_callback(self._on_unblocked)
            generation = self._generation + 1
            tag = channel.basic_consume(self.queue, self._receiver(generation))
        except BaseException:
            _close_quietly(connection)
            raise

        self._connection, self._channel, self._consumer_tag = connection, channel, tag
        self._generation = generation
        self._buckets = set()
        self._unacked = set()
        self._note_connected()

    def _receiver(self, generation: int) -> Callable[..., None]:
        """The consumer callback of one channel: it only buffers, in the owner."""

        def receive(channel: Any, method: Any, properties: Any, body: bytes) -> None:
            headers = properties.headers or {}
            tag = method.delivery_tag
            self._unacked.add(tag)
            self._ready.append(_Delivery(
                generation,
                tag,
                body,
                message_key(properties.message_id, body),
                properties.message_id,
                own_headers(headers),
                header_int(headers, HEADER_ATTEMPTS, 0),
                max(1, header_int(headers, HEADER_MAX_ATTEMPTS, self.default_max_attempts)),
                bool(method.redelivered),
            ))

        return receive

    # -- outages --------------------------------------------------------------------

    def _note_connected(self) -> None:
        """Say so; the outage itself ends only once the connection proves stable."""
        self._connected_at = time.monotonic()
        if self._outage_since is not None:
            self.log.info("{}: reconnected to {} after {:.1f}s ({} failed attempt(s))",
                          self.who, _masked(self.url), self._connected_at - self._outage_since,
                          self._failed_connects)
        else:
            self.log.info("{}: connected to {} (prefetch {}, heartbeat {}s)", self.who,
                          _masked(self.url), self.prefetch, self._parameters.heartbeat)

    def _end_outage_if_stable(self) -> None:
        if self._outage_since is None:
            return
        if time.monotonic() - self._connected_at >= STABLE_CONNECTION_SECONDS:
            self._outage_since = None
            self._failed_connects = 0

    def _note_failed_connect(self, error: BaseException) -> None:
        """Warn once per outage; later failures are DEBUG, with a rare reminder.

        A first attempt refused for its settings is left to start(), which turns it
        into a configuration error instead of a promise to retry.
        """
        if not self._first_attempt.is_set():
            self._first_error = error
            if isinstance(error, PERMANENT_ERRORS):
                return
        self._failed_connects += 1
        now = time.monotonic()
        if self._outage_since is None:
            self._outage_since = self._outage_reminded_at = now
            self.log.warning("{}: cannot connect to {} ({}: {}); retrying with backoff up "
                             "to {:g}s", self.who, _masked(self.url), type(error).__name__,
                             error, self.reconnect_max)
        elif now - self._outage_reminded_at >= OUTAGE_REMINDER_SECONDS:
            self._outage_reminded_at = now
            self.log.warning("{}: still no broker after {:.0f}s ({} attempts): {}",
                             self.who, now - self._outage_since, self._failed_connects,
                             error)
        else:
            self.log.debug("{}: reconnect attempt {} failed: {}", self.who,
                           self._failed_connects, error)

    def _lose_connection(self, error: BaseException) -> None:
        """Forget the connection and everything tied to its channel.

        The first loss is a warning and is retried at once; a connection lost again
        before it proved stable is part of the same outage and waits its backoff.
        """
        now = time.monotonic()
        if self._outage_since is None:
            self._outage_since = self._outage_reminded_at = now
            self.log.warning("{}: lost the broker connection ({}: {}); reconnecting with "
                             "backoff up to {:g}s", self.who, type(error).__name__, error,
                             self.reconnect_max)
        else:
            self._failed_connects += 1
            self._reconnect_at = now + self._reconnect.delay(self._failed_connects)
            self.log.debug("{}: lost the new connection too ({}); next attempt in {:.1f}s",
                           self.who, error, self._reconnect_at - now)
        _close_quietly(self._connection)
        self._connection = self._channel = self._consumer_tag = None
        self._generation += 1
        self._drop_pending("the connection that delivered them is gone")

    def _drop_pending(self, why: str) -> None:
        """Forget buffered deliveries and unapplied outcomes of a dead channel.

        Their delivery tags mean nothing on another channel; the broker delivers the
        messages again, which is at-least-once doing its job.
        """
        dropped = len(self._applying) + len(self._unwritten) + len(self._outcomes)
        self._applying, self._unwritten, self._outcomes = [], [], []
        self._answer_queries(fail=True)
        unstarted = len(self._ready)
        self._ready.clear()
        if dropped or unstarted:
            self.log.info("{}: dropped {} outcome(s) and {} unstarted message(s): {}; the "
                          "broker delivers them again", self.who, dropped, unstarted, why)

    def _on_blocked(self, connection: Any, method: Any) -> None:
        self.log.warning("{}: the broker blocked the connection ({}); it is dropped if this "
                         "lasts {:g}s", self.who, getattr(method.method, "reason", "alarm"),
                         self._parameters.blocked_connection_timeout)

    def _on_unblocked(self, connection: Any, method: Any) -> None:
        self.log.info("{}: the broker unblocked the connection", self.who)

    # -- applying outcomes (owner) --------------------------------------------------

    def _apply_requests(self, force: bool = False) -> None:
        """Answer queries, then write results and act on the outcomes waiting, once
        enough of them wait or the oldest has waited long enough (always with
        ``force``): a batch costs one write, one fsync and one flush of acks."""
        self._answer_queries(fail=False)
        if not self._unwritten and not self._flush_due(force):
            return
        batch = self._unwritten + self._outcomes
        self._unwritten, self._outcomes = [], []
        if not batch:
            return

        live = [item for item in batch if item.delivery.generation == self._generation]
        if len(live) < len(batch):
            self.log.info("{}: dropped {} outcome(s) of a lost channel; the broker delivers "
                          "those messages again", self.who, len(batch) - len(live))
        if live and self._write_results(live):
            self._carry_out(live)

    def _flush_due(self, force: bool) -> bool:
        if not self._outcomes:
            return False
        return (force or len(self._outcomes) >= self._flush_size
                or time.monotonic() - self._outcomes_since >= FLUSH_INTERVAL_SECONDS)

    def _answer_queries(self, fail: bool) -> None:
        """Answer every waiting query, or fail them all when there is no connection."""
        while True:
            try:
                query = self._requests.get_nowait()
            except Empty:
                return
            if fail:
                query.answer.set_exception(ConnectionError("no broker connection"))
            else:
                self._answer(query)

    def _answer(self, query: _Query) -> None:
        try:
            query.answer.set(query.ask())
        except BaseException as error:
            query.answer.set_exception(error)
            if isinstance(error, OUTAGE_ERRORS):
                raise

    def _write_results(self, batch: list[_Settlement]) -> bool:
        """Write the final result lines before any of them is acknowledged.

        On failure the batch waits (its messages stay unacknowledged) and is tried
        again after a pause, while the owner keeps pumping heartbeats.
        """
        if time.monotonic() < self._results_retry_at:
            self._unwritten = batch
            return False
        records = [item.decision.record for item in batch if item.decision.record is not None]
        try:
            if self.results is not None and records:
                self.results.write_many(records)
        except Exception:
            self.log.exception("{}: could not write {} result line(s); trying again in {:g}s",
                               self.who, len(records), RESULTS_RETRY_SECONDS)
            self._unwritten = batch
            self._results_retry_at = time.monotonic() + RESULTS_RETRY_SECONDS
            return False
        return True

    def _carry_out(self, batch: list[_Settlement]) -> None:
        """Publish each needed copy (confirmed), then acknowledge the whole batch.

        A copy's publish waits for its confirm, so every original is acknowledged
        only after its copy is safe with the broker; the acknowledgements themselves
        go out together (see :meth:`_acknowledge`).
        """
        self._applying = list(batch)
        for item in batch:
            self._publish_copy(item)
        self._acknowledge([item.delivery.tag for item in batch])
        self._applying = []

    def _acknowledge(self, tags: list[int]) -> None:
        """Acknowledge deliveries of the current channel in as few frames as possible.

        Tags below the oldest delivery still unsettled are covered by one ``multiple``
        acknowledgement: every delivery up to there is settled, in this batch or in an
        earlier one. The rest are acknowledged one by one. All frames are written out
        together: ``BlockingChannel.basic_ack`` flushes and polls the socket for every
        call, which cost more than the rest of a job's handling together, so the
        frames are queued on the channel's underlying pika channel and flushed once
        (a pika without that attribute gets the public call per frame).
        """
        unacked = self._unacked
        unacked.difference_update(tags)
        oldest = min(unacked, default=None)
        covered = [tag for tag in tags if oldest is None or tag < oldest]
        singles = [tag for tag in tags if oldest is not None and tag > oldest]

        frames = [(tag, False) for tag in singles]
        if covered:
            frames.append((max(covered), True))
        queue_ack = getattr(self._channel, "_impl", self._channel).basic_ack
        for tag, multiple in frames:
            queue_ack(delivery_tag=tag, multiple=multiple)
        self._connection.process_data_events(time_limit=0)

    def _publish_copy(self, item: _Settlement) -> None:
        action = item.decision.action
        delivery = item.delivery
        if action is Action.ACK:
            return
        if action is Action.DEAD_LETTER:
            self._publish(dead_queue_name(self.queue), delivery, item.attempts, {
                HEADER_REASON: (item.decision.reason or "")[:MAX_REASON_CHARS],
                HEADER_DIED_AT: int(time.time() * 1000),
                HEADER_DEAD_REF: uuid.uuid4().hex[:16],
            })
        elif action is Action.RETRY:
            self._publish(self._bucket(item.decision.delay_seconds), delivery, item.attempts)
        else:
            self._publish(self.queue, delivery, item.attempts)

    def _publish(self, routing_key: str, delivery: _Delivery, attempts: int,
                 extra: dict[str, Any] | None = None) -> None:
        headers = {**delivery.headers, **(extra or {})}
        properties = job_properties(delivery.message_id or delivery.key, attempts,
                                    delivery.max_attempts, headers)
        publish(self._channel, routing_key, delivery.body, properties)

    def _bucket(self, delay_seconds: float) -> str:
        """The queue a retry goes to: a delay bucket, declared on first use."""
        milliseconds = bucket_for(delay_seconds)
        if milliseconds == 0:
            return self.queue
        if milliseconds not in self._buckets:
            declare_bucket(self._channel, self.queue, milliseconds)
            self._buckets.add(milliseconds)
            self._known_buckets.add(milliseconds)
        return retry_queue_name(self.queue, milliseconds)

    def _depths_now(self) -> dict[str, int]:
        """Queue depths, after dispatching whatever the broker already sent us."""
        depths = queue_depths(self._connection, self.queue, sorted(self._known_buckets))
        self._connection.process_data_events(time_limit=0)
        depths["buffered"] = len(self._ready)
        return depths

    # -- shutting down (owner) ------------------------------------------------------

    def _shut_down(self) -> None:
        """Stop deliveries, settle what finished, return the unstarted, then close.

        The consumer is cancelled before the last acknowledgements go out: each ack
        frees prefetch credit, and a message the broker sends into it while the cancel
        is under way is requeued by pika with the redelivered flag, which would cost it
        an attempt. A synchronous round trip first brings in what the broker already
        sent, so it lands in the buffer and goes back unspent.
        """
        try:
            self._channel.basic_qos(prefetch_count=self.prefetch)
            self._connection.process_data_events(time_limit=0)
            self._channel.basic_cancel(self._consumer_tag)
            self._apply_requests(force=True)
            self._return_unstarted()
            self._apply_requests(force=True)
            self._drain_unwritten()
            self._channel.close()
            self._connection.close()
        except OUTAGE_ERRORS as error:
            self.log.warning("{}: the broker connection failed while closing ({}); "
                             "unsettled messages return to the queue", self.who, error)
            self._drop_pending("the connection failed during shutdown")
        self._connection = self._channel = None
        self._finished = True

    def _return_unstarted(self) -> None:
        """Put buffered, never-started messages back without spending an attempt.

        A copy is published and the original acknowledged; leaving them to the
        channel close would mark them redelivered, which counts as a crashed attempt.
        """
        unstarted = [delivery for delivery in self._ready
                     if delivery.generation == self._generation]
        self._ready.clear()
        if unstarted:
            self.log.info("{}: returning {} unstarted message(s) to the queue", self.who,
                          len(unstarted))
        for delivery in unstarted:
            self._outcomes.append(_Settlement(delivery, Decision(Action.REQUEUE),
                                              delivery.spent))

    def _drain_unwritten(self) -> None:
        """At shutdown a failed results write is tried once more, then given up."""
        if self._unwritten:
            self._results_retry_at = 0.0
            self._apply_requests(force=True)
        if self._unwritten:
            self._drop_pending("their result lines could not be written")


# -- the publisher ---------------------------------------------------------------------


class RabbitMQPublisher(Publisher):
    """Publishes jobs and manages dead letters over a plain blocking connection.

    It needs no gevent: it runs in a Flask view or a cron script as well as in the
    CLI. Every publish waits for the broker's confirm, so ``publish_many`` returns
    only once the broker has taken responsibility for each message.
    """

    def __init__(self, url: str, queue: str, *,
                 heartbeat: float = DEFAULT_HEARTBEAT_SECONDS,
                 source: str | None = None) -> None:
        self.url = url
        self.queue = queue
        parameters = connection_parameters(url, heartbeat,
                                           f"async_consumer publisher {os.getpid()}")
        quiet_pika_logging()
        try:
            self._connection = pika.BlockingConnection(parameters)
        except pika.exceptions.AMQPError as error:
            raise ConfigError(
                f"cannot connect to the broker: {type(error).__name__}: {error}",
                source=source, section="provider", key="url", value=_masked(url),
                expected="a reachable RabbitMQ that accepts these credentials",
            ) from error
        try:
            self._channel = self._connection.channel()
            declare_topology(self._channel, queue)
            self._channel.confirm_delivery()
        except pika.exceptions.ChannelClosedByBroker as error:
            _close_quietly(self._connection)
            raise ConfigError(
                f"the broker refused the queue: {error}", source=source,
                section="provider", key="queue", value=queue,
                expected="a queue name whose queues are durable and were declared without "
                "extra arguments",
            ) from error
        except BaseException:
            _close_quietly(self._connection)
            raise

    @classmethod
    def from_config(cls, config: Config) -> RabbitMQPublisher:
        section = config.provider
        return cls(section.broker_url, section.queue or DEFAULT_QUEUE_NAME,
                   heartbeat=section.heartbeat or DEFAULT_HEARTBEAT_SECONDS,
                   source=config.source)

    def publish_many(self, messages: Iterable[Message]) -> int:
        count = 0
        for job_id, payload, max_attempts in messages:
            publish(self._channel, self.queue, payload.encode("utf-8"),
                    job_properties(job_id, 0, max_attempts))
            count += 1
        return count

    def list_dead(self, limit: int = 100) -> list[dict[str, Any]]:
        """Peek at dead letters: taken unacknowledged, returned when the channel closes."""
        channel = self._connection.channel()
        entries: list[dict[str, Any]] = []
        try:
            while len(entries) < limit:
                method, properties, body = channel.basic_get(dead_queue_name(self.queue))
                if method is None:
                    break
                entries.append(_dead_entry(properties, body))
        finally:
            _close_quietly(channel)
        return entries

    def requeue_dead(self, refs: list[str] | None = None) -> int:
        """Move dead letters back to the job queue with their attempts reset to 0.

        Each copy is confirmed before its dead letter is acknowledged; the ones not
        asked for are held unacknowledged and go back, in order, when the channel
        closes. At most the messages present at the start are looked at.
        """
        wanted = None if refs is None else set(refs)
        channel = self._connection.channel()
        channel.confirm_delivery()
        moved = 0
        try:
            present = channel.queue_declare(dead_queue_name(self.queue), passive=True)\
                .method.message_count
            for _ in range(present):
                method, properties, body = channel.basic_get(dead_queue_name(self.queue))
                if method is None:
                    break
                if wanted is not None and _dead_ref(properties, body) not in wanted:
                    continue
                publish(channel, self.queue, body, _revived(properties, body))
                channel.basic_ack(method.delivery_tag)
                moved += 1
        finally:
            _close_quietly(channel)
        return moved

    def counts(self) -> dict[str, int]:
        """Ready and dead messages, and consumers; delayed retries wait in
        ``<queue>.retry.<ms>`` queues that ``rabbitmqctl list_queues`` shows."""
        depths = queue_depths(self._connection, self.queue)
        del depths["delayed"]
        return depths

    def close(self) -> None:
        _close_quietly(self._connection)


def _dead_ref(properties: Any, body: bytes) -> str:
    headers = properties.headers or {}
    return str(headers.get(HEADER_DEAD_REF) or message_key(properties.message_id, body))


def _dead_entry(properties: Any, body: bytes) -> dict[str, Any]:
    headers = properties.headers or {}
    died_at = headers.get(HEADER_DIED_AT)
    return {
        "ref": _dead_ref(properties, body),
        "id": message_key(properties.message_id, body),
        "attempts": header_int(headers, HEADER_ATTEMPTS, 0),
        "max_attempts": header_int(headers, HEADER_MAX_ATTEMPTS, DEFAULT_MAX_ATTEMPTS),
        "reason": _text(headers.get(HEADER_REASON)),
        "died_at": died_at / 1000 if isinstance(died_at, int) else None,
    }


def _revived(properties: Any, body: bytes) -> pika.BasicProperties:
    """A dead letter's properties for its way back: fresh attempts, no dead headers."""
    headers = {name: value for name, value in own_headers(properties.headers).items()
               if name not in (HEADER_REASON, HEADER_DIED_AT, HEADER_DEAD_REF)}
    max_attempts = header_int(headers, HEADER_MAX_ATTEMPTS, DEFAULT_MAX_ATTEMPTS)
    return job_properties(message_key(properties.message_id, body), 0, max_attempts, headers)


def _text(value: Any) -> str | None:
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return None if value is None else str(value)
