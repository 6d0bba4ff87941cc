"""Masking secrets in text bound for a log.

Job URLs, broker URLs and error messages can carry credentials: a password in a URL,
a token in a query string, an ``Authorization`` or ``Cookie`` header quoted in an
exception. Log lines travel further than the INI file or the queue ever do (log
shippers, tickets, chat), so the log sink passes every finished line, traceback
included, through :func:`redact_text` before writing it.

Only the standard library is used: the sink runs for every line and must not import
anything on the way.
"""

from __future__ import annotations

import re
from typing import Any, TextIO

MASK = "***"

#: ``scheme://user:password@`` in any URL, broker URLs included.
_URL_PASSWORD = re.compile(r"(?P<head>\b[A-Za-z][A-Za-z0-9+.-]*://[^:/?#@\s\"']*:)"
                           r"[^@/?#\s\"']*@")
#: A header line or mapping entry whose value is a credential, up to the line's end or
#: the closing quote.
_HEADER = re.compile(
    r"(?P<head>(?i:\b(?:proxy-)?authorization|\bcookie|\bset-cookie|\bx-api-key"
    r"|\bx-auth-token)[\"']?\s*[:=]\s*[\"']?)"
    r"(?P<value>[^\"'\r\n,}]+)"
)
#: ``password=...`` and friends in query strings, form bodies and key=value text.
_PARAMETER = re.compile(
    r"(?P<head>(?i:\b[\w.-]*(?:password|passwd|secret|token|api[_-]?key|access[_-]?key)"
    r")[\"']?\s*[=:]\s*[\"']?)(?P<value>[^&\s\"',;}]+)"
)


def redact_text(text: str) -> str:
    """``text`` with every credential it seems to hold replaced by ``***``."""
    if "://" in text:
        text = _URL_PASSWORD.sub(rf"\g<head>{MASK}@", text)
    text = _HEADER.sub(rf"\g<head>{MASK}", text)
    return _PARAMETER.sub(rf"\g<head>{MASK}", text)


def redact_url(url: str) -> str:
    """A URL fit for a log line: no password, no secret query parameter."""
    return redact_text(url)


class RedactingStream:
    """A write-only stream that masks secrets before passing text on.

    loguru writes finished lines (message, exception and all, or the JSON object when
    serialising) to its sink's ``write``: masking here covers every field at once.
    """

    def __init__(self, target: TextIO, close_target: bool = False) -> None:
        self.target = target
        self._close_target = close_target

    def write(self, text: str) -> Any:
        return self.target.write(redact_text(text))

    def flush(self) -> None:
        self.target.flush()

    def isatty(self) -> bool:
        isatty = getattr(self.target, "isatty", None)
        return bool(isatty and isatty())

    def stop(self) -> None:
        """Called by loguru when the sink is removed: close a file this stream owns."""
        if self._close_target:
            self.target.close()
