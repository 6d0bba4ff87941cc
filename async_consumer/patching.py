"""Checks that gevent's monkey-patching is in place, complete and early enough.

Two mistakes are common and silent. Patching after ``ssl``/``urllib3`` were imported
leaves modules holding the original ``ssl.SSLContext`` (RecursionError on some
Pythons, subtly wrong TLS on others). Not patching at all makes every socket block
the whole process, so "concurrent" tasks quietly run one after another.
"""

from __future__ import annotations

import sys
from types import ModuleType

from .errors import PatchError

#: Modules that must be patched for HTTP tasks to run concurrently.
REQUIRED_PATCHED_MODULES = ("socket", "ssl", "select", "threading", "time")

#: Modules the entry point must not find imported before it patches.
EARLY_IMPORT_SENSITIVE_MODULES = ("ssl", "urllib3", "requests", "http.client")

#: Attributes of ``select`` that block the whole process and must be gone after patching.
BLOCKING_POLLERS = ("epoll", "kqueue", "devpoll")

_IGNORED_MODULE_PREFIXES = ("ssl", "gevent", "_ssl")


def patch_process() -> None:
    """Monkey-patch the whole process; only an entry point should call this.

    Raises :class:`PatchError` when modules that keep references to ``ssl`` objects
    were imported first, naming them, instead of running on a half-patched stack.
    """
    early = [name for name in EARLY_IMPORT_SENSITIVE_MODULES if name in sys.modules]

    from gevent import monkey

    if early and not monkey.is_module_patched("socket"):
        raise PatchError(
            "gevent must patch the process before these modules are imported, but "
            f"they already were: {', '.join(early)}. Start through the async-consumer "
            "command, or call gevent.monkey.patch_all() on the first line of your "
            "entry point, before importing requests, urllib3 or your application."
        )

    monkey.patch_all()
    problems = find_patching_problems()
    if problems:
        raise PatchError("; ".join(problems))


def find_patching_problems() -> list[str]:
    """Return what is wrong with the process's patching, one sentence each.

    An empty list means sockets, ssl, select, threads and time are cooperative.
    """
    from gevent import monkey

    problems = []
    unpatched = [name for name in REQUIRED_PATCHED_MODULES if not monkey.is_module_patched(name)]
    if unpatched:
        problems.append(
            f"gevent has not monkey-patched {', '.join(unpatched)}: network calls would "
            "block the whole process and tasks would run one after another. Call "
            "gevent.monkey.patch_all() before anything else is imported (the "
            "async-consumer command does this for you)"
        )

    import select

    left = [f"select.{name}" for name in BLOCKING_POLLERS if hasattr(select, name)]
    if left and monkey.is_module_patched("select"):
        problems.append(
            f"{', '.join(left)} survived monkey-patching: a client that prefers it "
            "would block the whole process; this gevent release is not supported"
        )

    stale = modules_with_original_sslcontext()
    if stale:
        problems.append(
            "gevent patched ssl too late: these modules were imported first and keep "
            f"the unpatched SSLContext: {', '.join(stale)}. Patch on the first line of "
            "the entry point, before importing requests, urllib3 or the application"
        )
    return problems


def modules_with_original_sslcontext() -> list[str]:
    """Names of loaded modules that hold the pre-patch ``ssl.SSLContext``."""
    from gevent import monkey

    if not monkey.is_module_patched("ssl"):
        return []

    original = monkey.get_original("ssl", "SSLContext")
    stale = []
    for name, module in list(sys.modules.items()):
        if _holds(module, original) and not name.startswith(_IGNORED_MODULE_PREFIXES):
            stale.append(name)
    return sorted(stale)


def _holds(module: ModuleType | None, original: type) -> bool:
    if module is None:
        return False
    try:
        return any(value is original for value in vars(module).values())
    except TypeError:
        return False


_verified = False


def ensure_cooperative() -> None:
    """Raise :class:`PatchError` unless network I/O is cooperative in this process.

    Called before the first HTTP request; once the answer is yes it is cached,
    because patching cannot be undone.
    """
    global _verified
    if _verified:
        return

    problems = find_patching_problems()
    if problems:
        raise PatchError("; ".join(problems))
    _verified = True
