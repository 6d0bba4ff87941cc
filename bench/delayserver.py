"""The delay server: ``/delay/<ms>`` answers after that many milliseconds.

    python -m bench.delayserver --port-file PATH

gevent's WSGI server with no pool limit, so it holds as many requests at once as it
is sent (the concurrency curve goes to 1,000). Every accepted socket gets
``TCP_NODELAY``: without it, the second answer on a keep-alive connection can wait
for the client's delayed ACK (about 40 ms on Linux), which would swamp a 20 ms delay.
"""

import argparse
import os
import socket
import sys
from collections.abc import Callable, Iterable

import gevent
from gevent.pywsgi import WSGIServer

LISTEN_BACKLOG = 4096
BODY = b"ok\n"


def application(environ: dict, start_response: Callable) -> Iterable[bytes]:
    parts = [part for part in environ.get("PATH_INFO", "/").split("/") if part]
    if len(parts) == 2 and parts[0] == "delay" and parts[1].isdigit():
        gevent.sleep(int(parts[1]) / 1000)
    elif parts and parts != ["ok"]:
        start_response("404 Not Found", [("Content-Length", "0")])
        return [b""]
    start_response("200 OK", [("Content-Type", "text/plain"),
                              ("Content-Length", str(len(BODY)))])
    return [BODY]


class NoDelayServer(WSGIServer):
    """A WSGI server that turns Nagle's algorithm off on every connection."""

    def do_handle(self, *args: object) -> None:
        connection = args[0]
        connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # type: ignore
        super().do_handle(*args)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--port-file", required=True)
    args = parser.parse_args(argv)

    server = NoDelayServer(("127.0.0.1", args.port), application, log=None, error_log=None,
                           backlog=LISTEN_BACKLOG)
    server.start()
    temporary = f"{args.port_file}.{os.getpid()}"
    with open(temporary, "w") as handle:
        handle.write(str(server.server_port))
    os.replace(temporary, args.port_file)
    server.serve_forever()
    return 0


if __name__ == "__main__":
    sys.exit(main())
