"""A durable, at-least-once job queue kept in one SQLite file.

Several worker processes on one host may share the file. The design choices, and why:

* **Leases, not locks.** ``claim`` stamps a job with this instance's owner token and a
  lease expiry instead of holding a database lock while the job runs, so a job's work
  (seconds of HTTP) never blocks other workers. A worker that vanishes leaves leases
  behind; they become claimable again when they expire, or at once when the owner
  was a process on this host that no longer exists. That is what makes the queue
  at-least-once: a job is only deleted by ``complete_many``, and a lost lease means it
  will be delivered again.

* **``available_at`` doubles as the lease expiry.** While a job is leased its
  ``available_at`` holds the time the lease runs out, so "claimable" is always just
  ``available_at <= now``: one index serves ready jobs, delayed retries and expired
  leases, and a claim never has to step over jobs that other workers hold.

* **Owner checks everywhere.** ``complete_many``, ``retry``, ``release``,
  ``dead_letter`` and ``extend_leases`` only touch rows whose lease still names this
  instance. A worker whose lease ran out and was taken over by someone else
  therefore cannot delete, delay or bury a job that another worker is now running;
  its late call is silently a no-op (``complete_many`` reports how many rows it did
  delete).

* **WAL, ``BEGIN IMMEDIATE`` and short transactions.** WAL lets readers run while a
  writer commits. Every write takes the write lock up front with ``BEGIN IMMEDIATE``,
  so two processes can never both read the same ready row and then both lease it,
  and a deferred transaction can never fail half-way when upgrading to a write.
  ``synchronous=NORMAL`` is safe under WAL against process crashes (a committed
  transaction is in the WAL file, which the OS keeps); only a power loss or kernel
  crash can drop the last few commits, which costs at most a repeated or forgotten
  acknowledgement, in exchange for not calling fsync on every commit.

* **Waiting for the lock yields to gevent.** SQLite's own busy handler sleeps inside
  C, which would freeze every greenlet of the process while another process holds the
  write lock. The connection's busy timeout is therefore kept tiny and the rest of
  ``busy_timeout_seconds`` is spent retrying the whole transaction around
  ``time.sleep``, which gevent's monkey-patching turns into a cooperative wait.

Use an instance from one OS thread (greenlets of that thread may share it: no call
yields while a transaction is open) and from the process that created it.
"""

from __future__ import annotations

import contextlib
import math
import os
import random
import secrets
import socket
import sqlite3
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple, TypeVar

from async_consumer.errors import ConfigError, QueueError

__all__ = ["DeadJob", "QueueError", "QueuedJob", "SQLiteQueue"]

T = TypeVar("T")

# Marks a file as ours ("ACQ1"), so that pointing the queue at some other database
# fails loudly instead of adding tables to it.
APPLICATION_ID = 0x41435131
SCHEMA_VERSION = 1

# How long one statement may block the whole process (gevent hub included) inside
# SQLite's busy handler before control comes back to the Python-level retry loop.
_STATEMENT_BUSY_SECONDS = 0.01
_FIRST_PAUSE_SECONDS = 0.001
_MAX_PAUSE_SECONDS = 0.025

_SCHEMA = (
    # While leased: lease_* name the holder and available_at is the lease expiry.
    """
    CREATE TABLE IF NOT EXISTS jobs (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        key TEXT NOT NULL,
        payload TEXT NOT NULL,
        attempt INTEGER NOT NULL DEFAULT 0,
        max_attempts INTEGER NOT NULL,
        enqueued_at REAL NOT NULL,
        available_at REAL NOT NULL,
        lease_owner TEXT,
        lease_host TEXT,
        lease_pid INTEGER,
        last_error TEXT
    )
    """,
    "CREATE INDEX IF NOT EXISTS jobs_available ON jobs (available_at)",
    """
    CREATE INDEX IF NOT EXISTS jobs_lease ON jobs (lease_host, lease_owner, lease_pid)
    WHERE lease_owner IS NOT NULL
    """,
    """
    CREATE TABLE IF NOT EXISTS dead_jobs (
        id INTEGER PRIMARY KEY,
        key TEXT NOT NULL,
        payload TEXT NOT NULL,
        attempts INTEGER NOT NULL,
        max_attempts INTEGER NOT NULL,
        enqueued_at REAL NOT NULL,
        last_error TEXT,
        reason TEXT NOT NULL,
        died_at REAL NOT NULL
    )
    """,
    "CREATE INDEX IF NOT EXISTS dead_jobs_died ON dead_jobs (died_at)",
)

_SELECT_READY = """
    SELECT id, key, payload, attempt, max_attempts, enqueued_at, last_error
    FROM jobs WHERE available_at <= ? ORDER BY available_at, id LIMIT ?
"""

# Followed by "(?, ?, ...)": one statement leases a whole batch of ids.
_LEASE = """
    UPDATE jobs SET attempt = attempt + 1, available_at = ?,
        lease_owner = ?, lease_host = ?, lease_pid = ?
    WHERE id IN
"""

#: Ids bound in one statement: old SQLite builds allow at most 999 variables.
_IDS_PER_STATEMENT = 500

_BURY = """
    INSERT INTO dead_jobs
        (id, key, payload, attempts, max_attempts, enqueued_at, last_error, reason, died_at)
    SELECT id, key, payload, attempt, max_attempts, enqueued_at, last_error, ?, ?
    FROM jobs WHERE id = ?
"""

_UNBURY = """
    INSERT INTO jobs
        (id, key, payload, attempt, max_attempts, enqueued_at, available_at, last_error)
    SELECT id, key, payload, 0, max_attempts, enqueued_at, ?, last_error FROM dead_jobs
"""

_COUNT_LIVE = """
    SELECT COALESCE(SUM(available_at <= :now), 0),
           COALESCE(SUM(available_at > :now AND lease_owner IS NULL), 0),
           COALESCE(SUM(available_at > :now AND lease_owner IS NOT NULL), 0)
    FROM jobs
"""


class QueuedJob(NamedTuple):
    """One delivery of a job, as handed out by :meth:`SQLiteQueue.claim`.

    ``attempt`` counts deliveries including this one, so a handler can tell whether a
    failure is its last chance (``attempt >= max_attempts``) and dead-letter instead
    of retrying. It exceeds ``max_attempts`` when earlier deliveries ended without any
    outcome (the worker died or hung until its lease ran out); the queue still delivers
    such a job rather than burying it silently, so that the caller can record why it
    gave up and dead-letter it without running it again.

    A named tuple, immutable like a frozen dataclass but built several times faster:
    a worker makes one for every delivery.
    """

    job_id: int
    key: str
    payload: str
    attempt: int
    max_attempts: int
    enqueued_at: float
    last_error: str | None


@dataclass(frozen=True)
class DeadJob:
    """A job that gave up, kept with its reason so an operator can inspect or requeue it."""

    job_id: int
    key: str
    payload: str
    attempts: int
    max_attempts: int
    reason: str
    died_at: float


class SQLiteQueue:
    """A job queue in one SQLite file; see the module docstring for the design.

    ``clock`` exists so tests can move time without sleeping; production code keeps
    the default ``time.time`` because lease expiry is compared across processes.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        lease_seconds: float = 300.0,
        busy_timeout_seconds: float = 30.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if not (math.isfinite(lease_seconds) and lease_seconds > 0):
            raise ConfigError("lease_seconds must be positive", key="lease_seconds",
                              value=lease_seconds, expected="a number > 0")
        if not (math.isfinite(busy_timeout_seconds) and busy_timeout_seconds >= 0):
            raise ConfigError("busy_timeout_seconds must not be negative",
                              key="busy_timeout_seconds", value=busy_timeout_seconds,
                              expected="a number >= 0")

        self._path = Path(path)
        self._lease_seconds = float(lease_seconds)
        self._busy_timeout = float(busy_timeout_seconds)
        self._clock = clock
        self._pid = os.getpid()
        self._host = _host_identity()
        self._owner = f"{self._host}:{self._pid}:{secrets.token_hex(8)}"
        self._closed = False

        self._conn = self._connect()
        try:
            self._prepare_file()
        except BaseException:
            self._conn.close()
            raise

    @property
    def path(self) -> Path:
        return self._path

    @property
    def worker_id(self) -> str:
        """The lease owner token, worth logging next to lease-related surprises."""
        return self._owner

    def __enter__(self) -> SQLiteQueue:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # -- opening ---------------------------------------------------------------------

    def _connect(self) -> sqlite3.Connection:
        """Open the file, failing with the path in the message rather than SQLite's
        bare "unable to open database file"."""
        parent = self._path.parent
        if not parent.is_dir():
            raise ConfigError(f"directory {str(parent)!r} for the queue file does not exist",
                              value=str(self._path), expected="a path in an existing directory")
        if self._path.is_dir():
            raise ConfigError("the queue path is a directory", value=str(self._path),
                              expected="a file path")

        timeout = min(self._busy_timeout, _STATEMENT_BUSY_SECONDS)
        try:
            return sqlite3.connect(self._path, timeout=timeout, isolation_level=None)
        except sqlite3.Error as exc:
            raise ConfigError(f"cannot open the queue file: {exc}",
                              value=str(self._path)) from exc

    def _prepare_file(self) -> None:
        """Switch to WAL and create the schema; several processes may race here."""
        mode = self._with_busy_retry(
            lambda: self._conn.execute("PRAGMA journal_mode = WAL").fetchone()[0])
        if str(mode).lower() != "wal":
            raise ConfigError(f"the queue file cannot use WAL mode (got {mode!r})",
                              value=str(self._path), expected="a file on a local disk")

        self._conn.execute("PRAGMA synchronous = NORMAL")

        self._transaction(self._create_schema, write=True)

    def _create_schema(self, conn: sqlite3.Connection) -> None:
        app_id = conn.execute("PRAGMA application_id").fetchone()[0]
        version = conn.execute("PRAGMA user_version").fetchone()[0]

        if app_id == 0:
            if conn.execute("SELECT EXISTS (SELECT 1 FROM sqlite_master)").fetchone()[0]:
                raise ConfigError("the file is a database that is not a job queue",
                                  value=str(self._path))
            for statement in _SCHEMA:
                conn.execute(statement)
            conn.execute(f"PRAGMA application_id = {APPLICATION_ID}")
            conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
            return

        if app_id != APPLICATION_ID:
            raise ConfigError("the file is a database that is not a job queue",
                              value=str(self._path))
        if version != SCHEMA_VERSION:
            raise ConfigError(f"the queue file has schema version {version}",
                              value=str(self._path), expected=f"version {SCHEMA_VERSION}")

    # -- transactions ----------------------------------------------------------------

    def _live_connection(self) -> sqlite3.Connection:
        if self._closed:
            raise QueueError(f"the queue {str(self._path)!r} is closed")
        if os.getpid() != self._pid:
            # A forked child would share the parent's SQLite handle and lease identity.
            raise QueueError("a SQLiteQueue cannot be used across fork(); "
                             "open a new one in the child process")
        return self._conn

    def _with_busy_retry(self, attempt: Callable[[], T]) -> T:
        """Run ``attempt`` until it gets past SQLITE_BUSY or the busy timeout runs out.

        The sleep between tries is where other greenlets run; the jitter keeps several
        processes from retrying in lockstep.
        """
        deadline = time.monotonic() + self._busy_timeout
        pause = _FIRST_PAUSE_SECONDS
        while True:
            try:
                return attempt()
            except sqlite3.OperationalError as exc:
                if not _is_busy(exc):
                    raise
                left = deadline - time.monotonic()
                if left <= 0:
                    raise QueueError(f"the queue {str(self._path)!r} stayed locked for "
                                     f"{self._busy_timeout:g} s") from exc

            time.sleep(min(left, pause * random.uniform(0.5, 1.5)))
            pause = min(pause * 2, _MAX_PAUSE_SECONDS)

    def _transaction(self, body: Callable[[sqlite3.Connection], T], *, write: bool) -> T:
        """Run ``body`` in one transaction, retried as a whole while the file is busy.

        A retry is safe because a failed try is rolled back before the next one.
        """
        conn = self._live_connection()
        begin = "BEGIN IMMEDIATE" if write else "BEGIN"

        def once() -> T:
            conn.execute(begin)
            try:
                result = body(conn)
                conn.execute("COMMIT")
            except BaseException:
                if conn.in_transaction:
                    with contextlib.suppress(sqlite3.Error):
                        conn.execute("ROLLBACK")
                raise
            return result

        return self._with_busy_retry(once)

    # -- producing -------------------------------------------------------------------

    def put_many(self, items: Iterable[tuple[str, str, int]]) -> int:
        """Store ``(key, payload, max_attempts)`` jobs in one transaction.

        Everything is validated before the write lock is taken, so a bad item stores
        nothing and does not hold up other processes.
        """
        now = self._clock()
        rows = [_job_row(item, now) for item in items]
        if not rows:
            return 0

        def body(conn: sqlite3.Connection) -> int:
            conn.executemany(
                "INSERT INTO jobs (key, payload, max_attempts, enqueued_at, available_at)"
                " VALUES (?, ?, ?, ?, ?)", rows)
            return len(rows)

        return self._transaction(body, write=True)

    # -- consuming -------------------------------------------------------------------

    def claim(self, limit: int) -> list[QueuedJob]:
        """Lease up to ``limit`` claimable jobs, the longest-ready first.

        Claimable means ``available_at`` has passed: never leased, retry delay over,
        or lease expired. Leases held by a process of this host that no longer exists
        are expired first, so its jobs come back at once instead of after
        ``lease_seconds``. Every delivery spends an attempt, including those whose
        worker died, so ``attempt`` can exceed ``max_attempts`` (see :class:`QueuedJob`).
        """
        if limit < 0:
            raise ValueError(f"limit must not be negative (got {limit})")
        if limit == 0:
            return []

        dead_owners = self._dead_owners()

        return self._transaction(lambda conn: self._claim_in(conn, limit, dead_owners),
                                 write=True)

    def _claim_in(self, conn: sqlite3.Connection, limit: int,
                  dead_owners: list[str]) -> list[QueuedJob]:
        now = self._clock()
        lease_until = now + self._lease_seconds

        if dead_owners:
            conn.executemany(
                "UPDATE jobs SET available_at = ?"
                " WHERE lease_host = ? AND lease_owner = ? AND available_at > ?",
                [(now, self._host, owner, now) for owner in dead_owners])

        rows = conn.execute(_SELECT_READY, (now, limit)).fetchall()
        lease = (lease_until, self._owner, self._host, self._pid)
        for chunk in _chunks([row[0] for row in rows]):
            conn.execute(_LEASE + _placeholders(len(chunk)), (*lease, *chunk))

        return [QueuedJob(row[0], row[1], row[2], row[3] + 1, row[4], row[5], row[6])
                for row in rows]

    def _dead_owners(self) -> list[str]:
        """Lease owners on this host whose process is gone.

        Only this host's owners can be checked: a pid means nothing elsewhere. The
        check happens outside the claim's write transaction to keep that short.
        """
        rows = self._transaction(
            lambda conn: conn.execute(
                "SELECT DISTINCT lease_owner, lease_pid FROM jobs"
                " WHERE lease_host = ? AND lease_owner IS NOT NULL", (self._host,)).fetchall(),
            write=False)

        return [owner for owner, pid in rows if pid != self._pid and not _pid_alive(pid)]

    def complete_many(self, job_ids: Iterable[int]) -> int:
        """Delete finished jobs in one transaction; returns how many were deleted.

        Jobs this instance no longer holds (its lease expired and another worker took
        them) are left alone and not counted: the other worker will deliver them again.
        """
        ids = list(job_ids)
        if not ids:
            return 0

        def body(conn: sqlite3.Connection) -> int:
            return sum(
                conn.execute("DELETE FROM jobs WHERE lease_owner = ? AND id IN "
                             + _placeholders(len(chunk)), (self._owner, *chunk)).rowcount
                for chunk in _chunks(ids))

        return self._transaction(body, write=True)

    def retry(self, job_id: int, delay_seconds: float, error: str) -> None:
        """Hand a failed job back for another try after ``delay_seconds``.

        The attempt stays spent, which is what bounds retries. A negative delay means
        "now". Does nothing if this instance no longer holds the job.
        """
        if not math.isfinite(delay_seconds):
            raise ValueError(f"delay_seconds must be finite (got {delay_seconds!r})")
        delay = max(0.0, float(delay_seconds))

        self._transaction(
            lambda conn: conn.execute(
                "UPDATE jobs SET available_at = ?, last_error = ?,"
                " lease_owner = NULL, lease_host = NULL, lease_pid = NULL"
                " WHERE id = ? AND lease_owner = ?",
                (self._clock() + delay, error, job_id, self._owner)),
            write=True)

    def release(self, job_id: int) -> None:
        """Requeue a job untouched at shutdown, giving back the attempt it was
        delivered with, since the job never got a fair try.

        Does nothing if this instance no longer holds the job.
        """
        self._transaction(
            lambda conn: conn.execute(
                "UPDATE jobs SET available_at = ?, attempt = MAX(attempt - 1, 0),"
                " lease_owner = NULL, lease_host = NULL, lease_pid = NULL"
                " WHERE id = ? AND lease_owner = ?",
                (self._clock(), job_id, self._owner)),
            write=True)

    def dead_letter(self, job_id: int, reason: str) -> None:
        """Move a job to the dead-letter table so it stops being delivered but is kept.

        Does nothing if this instance no longer holds the job: burying a job another
        worker is running would lose that worker's outcome.
        """
        def body(conn: sqlite3.Connection) -> None:
            held = conn.execute("SELECT 1 FROM jobs WHERE id = ? AND lease_owner = ?",
                                (job_id, self._owner)).fetchone()
            if held:
                _bury(conn, job_id, reason, self._clock())

        self._transaction(body, write=True)

    def extend_leases(self, job_ids: Iterable[int]) -> None:
        """Push the leases of still-running jobs to ``now + lease_seconds``.

        Long jobs call this periodically so that other workers do not take them over.
        Jobs this instance no longer holds are skipped.
        """
        ids = list(job_ids)
        if not ids:
            return

        def body(conn: sqlite3.Connection) -> None:
            until = self._clock() + self._lease_seconds
            conn.executemany("UPDATE jobs SET available_at = ? WHERE id = ? AND lease_owner = ?",
                             [(until, job_id, self._owner) for job_id in ids])

        self._transaction(body, write=True)

    # -- looking ---------------------------------------------------------------------

    def counts(self) -> dict[str, int]:
        """How many jobs are ``ready``, ``delayed``, ``leased`` and ``dead``.

        ``ready`` includes jobs whose lease expired or whose holder on this host has
        died, because the next claim will take them.
        """
        dead_owners = self._dead_owners()

        def body(conn: sqlite3.Connection) -> dict[str, int]:
            now = self._clock()
            ready, delayed, leased = conn.execute(_COUNT_LIVE, {"now": now}).fetchone()
            orphaned = self._count_orphaned(conn, dead_owners, now)
            dead = conn.execute("SELECT COUNT(*) FROM dead_jobs").fetchone()[0]
            return {"ready": ready + orphaned, "delayed": delayed,
                    "leased": leased - orphaned, "dead": dead}

        return self._transaction(body, write=False)

    def has_pending(self) -> bool:
        """Whether any live job exists, even one that is leased or waiting for a retry;
        a drain loop must not stop while such a job may still come back."""
        return bool(self._transaction(
            lambda conn: conn.execute("SELECT EXISTS (SELECT 1 FROM jobs)").fetchone()[0],
            write=False))

    def seconds_until_next(self) -> float | None:
        """How long until some live job could be claimed: ``0.0`` if one can be now,
        ``None`` if there are no live jobs. Lets an idle worker sleep exactly enough."""
        dead_owners = self._dead_owners()

        def body(conn: sqlite3.Connection) -> float | None:
            now = self._clock()
            earliest = conn.execute("SELECT MIN(available_at) FROM jobs").fetchone()[0]
            if earliest is None:
                return None
            if self._count_orphaned(conn, dead_owners, now):
                return 0.0
            return max(0.0, earliest - now)

        return self._transaction(body, write=False)

    def _count_orphaned(self, conn: sqlite3.Connection, dead_owners: list[str],
                        now: float) -> int:
        """Jobs still leased on paper to a process of this host that has died."""
        return sum(
            conn.execute("SELECT COUNT(*) FROM jobs WHERE lease_host = ? AND lease_owner = ?"
                         " AND available_at > ?", (self._host, owner, now)).fetchone()[0]
            for owner in dead_owners)

    # -- dead letters ----------------------------------------------------------------

    def list_dead(self, limit: int = 100) -> list[DeadJob]:
        """The dead-lettered jobs, in the order they died."""
        rows = self._transaction(
            lambda conn: conn.execute(
                "SELECT id, key, payload, attempts, max_attempts, reason, died_at"
                " FROM dead_jobs ORDER BY died_at, id LIMIT ?", (max(0, limit),)).fetchall(),
            write=False)

        return [DeadJob(job_id=row[0], key=row[1], payload=row[2], attempts=row[3],
                        max_attempts=row[4], reason=row[5], died_at=row[6]) for row in rows]

    def requeue_dead(self, job_ids: Iterable[int] | None = None) -> int:
        """Give dead jobs (all of them for ``None``) a fresh set of attempts, ready now.

        They keep their job id, key, enqueue time and last error, so logs about the
        job before and after the requeue line up. Returns how many were moved.
        """
        ids = None if job_ids is None else [(job_id,) for job_id in job_ids]
        if ids == []:
            return 0

        def body(conn: sqlite3.Connection) -> int:
            now = self._clock()
            if ids is None:
                moved = conn.execute(_UNBURY, (now,)).rowcount
                conn.execute("DELETE FROM dead_jobs")
                return moved

            conn.executemany(_UNBURY + " WHERE id = ?", [(now, job_id) for (job_id,) in ids])
            return conn.executemany("DELETE FROM dead_jobs WHERE id = ?", ids).rowcount

        return self._transaction(body, write=True)

    def close(self) -> None:
        """Close the connection; later calls raise :class:`QueueError`. Idempotent.

        In a forked child it only marks the queue closed: the SQLite handle belongs to
        the parent, and closing it from the child could disturb the parent's locks.
        """
        if self._closed:
            return

        self._closed = True
        if os.getpid() == self._pid:
            self._conn.close()


def _chunks(ids: list[int]) -> list[list[int]]:
    """``ids`` in slices small enough to bind in one statement."""
    return [ids[start:start + _IDS_PER_STATEMENT]
            for start in range(0, len(ids), _IDS_PER_STATEMENT)]


def _placeholders(count: int) -> str:
    """``(?, ?, ...)`` for ``count`` values."""
    return "(" + ",".join("?" * count) + ")"


def _job_row(item: tuple[str, str, int], now: float) -> tuple[str, str, int, float, float]:
    key, payload, max_attempts = item
    if not isinstance(key, str) or not isinstance(payload, str):
        raise TypeError(f"job key and payload must be str (got {type(key).__name__}, "
                        f"{type(payload).__name__})")
    if isinstance(max_attempts, bool) or not isinstance(max_attempts, int) or max_attempts < 1:
        raise ValueError(f"max_attempts must be an int >= 1 (got {max_attempts!r} "
                         f"for job {key!r})")
    return key, payload, max_attempts, now, now


def _bury(conn: sqlite3.Connection, job_id: int, reason: str, now: float) -> None:
    conn.execute(_BURY, (reason, now, job_id))
    conn.execute("DELETE FROM jobs WHERE id = ?", (job_id,))


def _host_identity() -> str:
    """Hostname plus PID namespace: containers that share a hostname but not a PID
    namespace must not judge each other's pids."""
    host = socket.gethostname()
    try:
        namespace = os.readlink("/proc/self/ns/pid")
    except OSError:
        return host
    return f"{host}/{namespace}"


def _pid_alive(pid: int | None) -> bool:
    """Whether a process exists; unsure answers count as alive, because wrongly
    taking a live worker's jobs causes double delivery while wrongly waiting only
    delays them until the lease expires.

    A zombie (dead but not yet reaped by its parent) still counts as alive, and a
    reused pid makes a dead worker look alive; both fall back to lease expiry.
    """
    if pid is None or pid <= 0:
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True
    return True


def _is_busy(exc: sqlite3.OperationalError) -> bool:
    code = getattr(exc, "sqlite_errorcode", None)
    if code is not None:
        return code & 0xFF in (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED)
    text = str(exc).lower()
    return "locked" in text or "busy" in text
