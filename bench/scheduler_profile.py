"""Where a no-op task's time goes in the scheduler, by component, under cProfile.

Runs 50,000 no-op promises through ``AsyncConsumer(MemoryProvider(...), 100, 0.0)``
with cProfile on, and sums each function's own time into the components of the
table in ``docs/performance.md``. cProfile inflates every figure (about 4x): compare
components with each other, not with unprofiled rates (``python -m bench.scheduler``).

    python -m bench.scheduler_profile [--tasks 50000]
"""

from __future__ import annotations

from gevent import monkey

monkey.patch_all()

import argparse  # noqa: E402
import cProfile  # noqa: E402
import logging  # noqa: E402
import pstats  # noqa: E402
from collections import defaultdict  # noqa: E402

from async_consumer import AsyncConsumer, MemoryProvider, Promise  # noqa: E402

MAIN_LOOP_FUNCTIONS = frozenset({
    "_loop", "_wait_for_free_slot", "_collect_batch", "_fetch", "_dispatch",
    "_log_progress_if_due", "_drained", "consume", "_shutdown", "_announce",
    "_pause_while_idle", "_idle_pause", "submit", "_wait_until", "_notify",
    "wait_available", "free_count", "__len__", "join", "close",
})
WORKER_FUNCTIONS = frozenset({
    "_add_worker", "_work", "_park", "_take", "_fan_out", "_yield_turn", "_task_done",
})


class NoOp(Promise):
    def run(self) -> None:
        pass


def component(path: str, function: str) -> str:
    """The table row a profiled function belongs to."""
    if path.endswith("gevent/pool.py") and function in ("wait_available", "join"):
        return "waiting for a slot (hub and switches)"
    if path.endswith(("consumer.py", "workers.py")) and function in MAIN_LOOP_FUNCTIONS:
        return "main loop fetch and dispatch"
    if "get_batch" in function or (path.endswith("provider.py") and function == "get"):
        return "provider get_batch"
    if path.endswith(("gevent/pool.py", "gevent/greenlet.py")) or function in WORKER_FUNCTIONS:
        return "greenlet or worker management"
    if path.endswith("gevent/timeout.py") or function == "arm" or "timer" in function:
        return "per-task timeout"
    if path.endswith(("stats.py", "random.py", "enum.py")):
        return "stats.record"
    if function == "_log_outcome" or path.endswith(("logs.py", "logging/__init__.py")):
        return "per-task logging"
    if path.endswith("status.py"):
        return "Status"
    if path.endswith("provider.py"):
        return "provider settle"
    if path.endswith(("consumer.py", "workers.py")):
        return "the task body"
    return "other (builtins: monotonic, deque, dict)"


def profile(tasks: int) -> dict[str, float]:
    """Microseconds of own time per task, by component, and the total."""
    quiet = logging.getLogger("bench.scheduler_profile")
    quiet.setLevel(logging.WARNING)
    consumer = AsyncConsumer(MemoryProvider(NoOp() for _ in range(tasks)), 100, 0.0, quiet,
                             handle_signals=False)

    profiler = cProfile.Profile()
    profiler.enable()
    consumer.consume(until_empty=True)
    profiler.disable()

    per_component: dict[str, float] = defaultdict(float)
    stats = pstats.Stats(profiler).stats  # type: ignore[attr-defined]
    for (path, _, function), (_, _, own_seconds, _, _) in stats.items():
        per_component[component(path, function)] += own_seconds / tasks * 1e6
    per_component["total"] = sum(per_component.values())
    return dict(per_component)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=50_000)
    arguments = parser.parse_args()

    for name, microseconds in sorted(profile(arguments.tasks).items(), key=lambda i: -i[1]):
        print(f"{name:42} {microseconds:7.2f} µs per task (profiled)")


if __name__ == "__main__":
    main()
