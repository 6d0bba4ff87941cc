"""``python -m bench``: run the benchmark suite (see ``--help``)."""

import sys

from bench.suite import main

if __name__ == "__main__":
    sys.exit(main())
