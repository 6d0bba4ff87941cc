"""The benchmark suite: async_consumer measured side by side with its peers.

Run it with ``make bench`` (or ``make bench-smoke`` for a quick pass). Every variant
runs in a process of its own, from the ``.venv-bench`` environment that holds the
peers, so that no library can patch or grow the memory of another.

This package imports nothing on purpose: its modules are started as child programs
that must monkey-patch before anything else is loaded.
"""
