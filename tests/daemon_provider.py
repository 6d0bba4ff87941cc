"""A provider for the daemon tests, loaded by a worker through
``[provider] type = daemon_provider:ScriptedProvider``.

It hands out cheap tasks at a steady pace and, when asked, one task that holds the
hub with the unpatched ``time.sleep``: the way a handler doing blocking I/O or heavy
CPU work freezes every greenlet of a real worker.
"""

import time

import gevent
from gevent import monkey

from async_consumer import Promise, Provider

_blocking_sleep = monkey.get_original("time", "sleep")


class QuickTask(Promise):
    def run(self):
        pass


class HubHog(Promise):
    """Holds the hub for ``seconds``; its name is what the blocked-hub report shows."""

    def __init__(self, seconds):
        super().__init__("hog-task")
        self.seconds = seconds

    def run(self):
        hold_the_hub_hostage(self.seconds)


class LeakyTask(Promise):
    """Fails with an error quoting credentials, as a careless handler's error would."""

    def run(self):
        raise ValueError(
            "POST https://svc:pw-in-url-1@api.example/hook?token=tok-in-query-2 failed; "
            "headers {'Authorization': 'Bearer auth-header-4', 'Cookie': 'sid=cookie-5'}, "
            "broker amqp://app:broker-pw-6@127.0.0.1:5672/%2F, password=pw-in-query-3"
        )


def hold_the_hub_hostage(seconds):
    _blocking_sleep(seconds)


class ScriptedProvider(Provider):
    """Quick tasks forever; one ``HubHog`` after ``block_after`` seconds if set, and
    one fetch that hangs (cooperatively) for ``stall_seconds`` after ``stall_after``."""

    def __init__(self, block_after="", block_seconds="3", stall_after="", stall_seconds="3",
                 leaks=""):
        self.leaks = int(leaks or 0)
        self.started = time.monotonic()
        self.block_after = float(block_after) if block_after else None
        self.block_seconds = float(block_seconds)
        self.stall_after = float(stall_after) if stall_after else None
        self.stall_seconds = float(stall_seconds)
        self.made = 0

    def get(self):
        if self.stall_after is not None and time.monotonic() - self.started > self.stall_after:
            self.stall_after = None
            gevent.sleep(self.stall_seconds)
        if self.block_after is not None and time.monotonic() - self.started > self.block_after:
            self.block_after = None
            return HubHog(self.block_seconds)
        if self.leaks:
            self.leaks -= 1
            return LeakyTask(f"leaky-{self.leaks}")
        self.made += 1
        if self.made % 50 == 0:
            return None
        return QuickTask()

    def queue_depth(self):
        return 7
