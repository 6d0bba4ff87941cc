"""Run one function of ``bench.scheduler`` in a fresh process and print its answer.

    python -m bench.overhead FUNCTION ARG...

``bench.scheduler`` measures the scheduler alone (no-op tasks, idle tasks, a long
soak); a process of its own keeps one measurement's memory out of the next one's.
Numeric arguments are passed as int when they look like one, otherwise as float.
"""

import importlib
import json
import sys
import time
from typing import Any


def parse(text: str) -> Any:
    try:
        return int(text)
    except ValueError:
        return float(text)


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if not args:
        print(__doc__, file=sys.stderr)
        return 2

    module = importlib.import_module("bench.scheduler")
    function = getattr(module, args[0])
    started = time.perf_counter()
    value = function(*[parse(text) for text in args[1:]])
    print(json.dumps({"value": value, "seconds": time.perf_counter() - started},
                     default=lambda o: getattr(o, "__dict__", str(o))))
    return 0


if __name__ == "__main__":
    sys.exit(main())
