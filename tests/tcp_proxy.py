"""A TCP proxy on 127.0.0.1 that a test can cut, stall or slow down.

It runs in the (monkey-patched) test process on gevent's server, between a worker
process and a broker, so that faults reach the worker exactly as a network would
deliver them: closed sockets, silence with the connection still open, or latency.
"""

from __future__ import annotations

import gevent
from gevent import socket
from gevent.event import Event
from gevent.server import StreamServer

CHUNK_BYTES = 65536


class TcpProxy:
    """Forwards ``127.0.0.1:port`` to ``upstream``; ``cut``/``stall``/``slow`` inject faults."""

    def __init__(self, upstream_host: str, upstream_port: int) -> None:
        self.upstream = (upstream_host, upstream_port)
        self.server = StreamServer(("127.0.0.1", 0), self._handle)
        self.flowing = Event()
        self.flowing.set()
        self.delay_seconds = 0.0
        self.refuse_new = False
        self.accepted = 0
        self._pairs: set[tuple[socket.socket, socket.socket]] = set()

    @property
    def port(self) -> int:
        return self.server.server_port

    @property
    def open_connections(self) -> int:
        return len(self._pairs)

    def start(self) -> TcpProxy:
        self.server.start()
        return self

    def stop(self) -> None:
        self.server.stop(timeout=1)
        self.cut()

    def cut(self) -> None:
        """Close every open connection, as a broker restart or a reset would."""
        for client, upstream in list(self._pairs):
            _close(client)
            _close(upstream)
        self._pairs.clear()

    def stall(self) -> None:
        """Stop forwarding in both directions but keep the connections open."""
        self.flowing.clear()

    def resume(self) -> None:
        self.flowing.set()
        self.delay_seconds = 0.0

    def slow(self, delay_seconds: float) -> None:
        """Hold every chunk for ``delay_seconds`` before passing it on."""
        self.delay_seconds = delay_seconds

    def _handle(self, client: socket.socket, address: tuple) -> None:
        if self.refuse_new:
            _close(client)
            return

        self.accepted += 1
        try:
            upstream = socket.create_connection(self.upstream, timeout=5)
        except OSError:
            _close(client)
            return
        upstream.settimeout(None)
        pair = (client, upstream)
        self._pairs.add(pair)
        pumps = [gevent.spawn(self._pump, client, upstream),
                 gevent.spawn(self._pump, upstream, client)]
        gevent.joinall(pumps, raise_error=False)
        self._pairs.discard(pair)
        _close(client)
        _close(upstream)

    def _pump(self, source: socket.socket, target: socket.socket) -> None:
        try:
            while True:
                chunk = source.recv(CHUNK_BYTES)
                if not chunk:
                    break
                self.flowing.wait()
                if self.delay_seconds:
                    gevent.sleep(self.delay_seconds)
                target.sendall(chunk)
        except OSError:
            pass
        finally:
            _close(source)
            _close(target)


def _close(sock: socket.socket) -> None:
    try:
        sock.close()
    except OSError:
        pass
