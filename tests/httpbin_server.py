"""Serve the third-party httpbin application on loopback for ``test_httpbin.py``.

Run it with an interpreter that can import httpbin: the system one with Debian's
``python3-httpbin``, or ``.venv-httpbin`` as ``make test`` builds it::

    /usr/bin/python3 tests/httpbin_server.py PORT_FILE

It listens on 127.0.0.1 on a port the kernel picks and writes that port to PORT_FILE
(atomically: a temporary file, then a rename) once the socket is listening. It serves
each request in a thread until it receives SIGTERM.

``werkzeug.serving.make_server`` is the part of ``run_simple`` that builds the server;
it is used directly because ``run_simple`` never tells which port it bound.

Exit status 3 means httpbin or werkzeug cannot be imported by this interpreter.
"""

import os
import signal
import sys

LOOPBACK = "127.0.0.1"
EXIT_CANNOT_IMPORT = 3


def main(argv):
    if len(argv) != 2:
        print("usage: httpbin_server.py PORT_FILE", file=sys.stderr)
        return 2
    port_file = argv[1]

    try:
        import httpbin
        from werkzeug.serving import make_server
    except ImportError as error:
        print(f"cannot serve httpbin: {error}", file=sys.stderr)
        return EXIT_CANNOT_IMPORT

    server = make_server(LOOPBACK, 0, httpbin.app, threaded=True)
    signal.signal(signal.SIGTERM, lambda number, frame: sys.exit(0))

    temporary = f"{port_file}.{os.getpid()}"
    with open(temporary, "w") as handle:
        handle.write(str(server.server_port))
    os.replace(temporary, port_file)

    try:
        server.serve_forever()
    finally:
        server.server_close()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
