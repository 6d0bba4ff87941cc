"""async_consumer: a gevent worker framework for I/O-bound jobs.

Importing the package loads nothing heavy: no ``requests``, no ``ssl``, no patching.
The names below are loaded on first use, so that an entry point can import this
package and still monkey-patch before ``ssl`` is imported.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_EXPORTS: dict[str, str | None] = {
    "AsyncConsumer": "consumer",
    "Mode": "consumer",
    "Promise": "promise",
    "yield_control": "promise",
    "producer": None,
    "Provider": "provider",
    "MemoryProvider": "provider",
    "Status": "status",
    "AsyncConsumerError": "errors",
    "ConfigError": "errors",
    "PromiseError": "errors",
    "TaskTimeout": "errors",
    "TaskCancelled": "errors",
    "RetryLater": "errors",
    "FatalTaskError": "errors",
    "PatchError": "errors",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'async_consumer' has no attribute {name!r}")
    module_name = _EXPORTS[name]
    if module_name is None:
        value: Any = importlib.import_module(f".{name}", __name__)
    else:
        value = getattr(importlib.import_module(f".{module_name}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(list(globals()) + __all__)
