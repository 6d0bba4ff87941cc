"""The ``async-consumer`` command.

The process is monkey-patched before anything else is imported, so that ``ssl``,
``urllib3`` and ``requests`` only ever see gevent's cooperative versions.
"""

from __future__ import annotations

import sys

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_CONFIG = 2
EXIT_FATAL_TASK = 3


def main(argv: list[str] | None = None) -> int:
    from .errors import PatchError
    from .patching import patch_process

    try:
        patch_process()
    except PatchError as error:
        print(f"async-consumer: {error}", file=sys.stderr)
        return EXIT_CONFIG

    from .commands import run_command

    return run_command(argv)


if __name__ == "__main__":
    sys.exit(main())
