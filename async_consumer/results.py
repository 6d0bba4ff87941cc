"""The results file: one JSON line per finished job, appended."""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any


class ResultsFile:
    """Appends result records to a JSON-lines file, durably before returning.

    Each call to :meth:`write_many` is one ``write`` on a file opened with
    ``O_APPEND``, so that several worker processes can share the file without
    interleaving their lines. With ``fsync`` on, the lines are on disk before the
    queue deletes the jobs they belong to; a crash in between gives a duplicate
    line on the next run, never a missing one.
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
        lines = [json.dumps(record, separators=(",", ":")) + "\n" for record in records]
        if not lines:
            return 0

        data = "".join(lines).encode()
        written = 0
        while written < len(data):
            written += os.write(self._fd, data[written:])
        if self.fsync:
            os.fsync(self._fd)
        return len(lines)

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
