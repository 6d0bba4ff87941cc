"""The results file: one JSON line per finished job, appended."""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterable
from json.encoder import encode_basestring_ascii
from pathlib import Path
from typing import Any

import gevent

#: One encoder for every line: ``json.dumps`` with any argument builds a new one per
#: call, which costs more than encoding a result line does.
_encode = json.JSONEncoder(separators=(",", ":")).encode
_quote = encode_basestring_ascii

#: The keys of the built-in job's result line, in order, and that line as a template.
RESULT_KEYS = ("id", "status", "status_code", "attempts", "elapsed_ms", "error",
               "finished_at")
_TEMPLATE = ('{"id":%s,"status":%s,"status_code":%s,"attempts":%s,"elapsed_ms":%s,'
             '"error":%s,"finished_at":%s}')


def encode_line(record: dict[str, Any]) -> str:
    """One result line: the compact JSON ``json.dumps`` would write.

    A line of the usual shape (``RESULT_KEYS`` with plain values) is filled into a
    template, in half the time the encoder takes; any other record goes through the
    encoder. Both give the same text.
    """
    if tuple(record) != RESULT_KEYS:
        return _encode(record)

    key, status, code, attempts, elapsed, error, finished = record.values()
    if not (type(key) is str and type(status) is str and type(attempts) is int
            and (code is None or type(code) is int)
            and (error is None or type(error) is str)
            and (elapsed is None or (type(elapsed) is float and math.isfinite(elapsed)))
            and type(finished) is float and math.isfinite(finished)):
        return _encode(record)
    return _TEMPLATE % (_quote(key), _quote(status), "null" if code is None else code,
                        attempts, "null" if elapsed is None else repr(elapsed),
                        "null" if error is None else _quote(error), repr(finished))


class ResultsFile:
    """Appends result records to a JSON-lines file, durably before returning.

    Each call to :meth:`write_many` is one ``write`` on a file opened with
    ``O_APPEND``, so that several worker processes can share the file without
    interleaving their lines. With ``fsync`` on, the lines are on disk before the
    queue deletes the jobs they belong to; a crash in between gives a duplicate
    line on the next run, never a missing one.

    The fsync runs in the gevent hub's thread pool and the caller waits for it
    cooperatively: on a busy disk (a broker persisting its own messages to it, say)
    one sync takes milliseconds, and called directly it would freeze every task of
    the worker for that long, many times a second. Other greenlets run meanwhile, so
    the providers serialise their flushes and never kill one half-way.
    """

    def __init__(self, path: str | os.PathLike, fsync: bool = True) -> None:
        self.path = Path(path)
        self.fsync = fsync
        if not self.path.parent.is_dir():
            raise FileNotFoundError(
                f"results directory {self.path.parent} does not exist; create it or set "
                "[results] path to a file in an existing directory"
            )
        self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)

    def write_many(self, records: Iterable[dict[str, Any]]) -> int:
        lines = [encode_line(record) for record in records]
        if not lines:
            return 0

        data = ("\n".join(lines) + "\n").encode()
        written = 0
        while written < len(data):
            written += os.write(self._fd, data[written:])
        if self.fsync:
            gevent.get_hub().threadpool.apply(os.fsync, (self._fd,))
        return len(lines)

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
