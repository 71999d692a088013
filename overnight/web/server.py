"""Serving the command center: uvicorn on a socket of ours, in a background thread.

Owns the listening socket (bound before the server starts, so port 0 gives a
known free port and a port in use fails at once with OSError), the uvicorn
server and its thread, the `shield` in front of the app (it answers only to the
names this socket is reached by), the event hub's lifetime, and the ready-to-click URL
(written to `.overnight/web.url`, mode 0600). Stopping closes every open stream
and terminal within a second or two. Knows nothing about pages.
"""

from __future__ import annotations

import contextlib
import logging
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import uvicorn

from overnight.paths import StateDir
from overnight.web.app import CommandCenter
from overnight.web.auth import write_url_file
from overnight.web.shield import Shield

log = logging.getLogger("overnight.web")


@dataclass(frozen=True)
class Served:
    url: str
    """The ready-to-click URL, token included."""
    base: str
    """http://HOST:PORT, without the token."""
    url_file: Path
    center: CommandCenter


def _listen(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(128)
        sock.set_inheritable(True)
    except OSError:
        sock.close()
        raise
    return sock


@contextlib.contextmanager
def serving(center: CommandCenter, host: str = "127.0.0.1", port: int = 0) -> Iterator[Served]:
    """Serve `center` on host:port (0 = any free port) for the length of the block."""
    sock = _listen(host, port)
    bound = sock.getsockname()[1]
    shown = f"[{host}]" if ":" in host else host
    base = f"http://{shown}:{bound}"
    config = uvicorn.Config(
        Shield(center.app, host),
        log_level="warning",
        access_log=False,
        lifespan="off",
        ws="websockets-sansio",
        http="httptools",
        timeout_graceful_shutdown=1,
        ws_ping_interval=20,
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(
        target=server.run, kwargs={"sockets": [sock]}, name="web-server", daemon=True
    )
    center.start()
    thread.start()
    try:
        deadline = time.monotonic() + 30
        while not server.started:
            if not thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the command center's web server did not start")
            time.sleep(0.01)
        url = f"{base}/?token={center.access.take_token()}"
        url_file = write_url_file(center.sources.state_dir, url)
        yield Served(url, base, url_file, center)
    finally:
        center.close()  # ends the event streams, so the server need not wait for them
        server.should_exit = True
        thread.join(timeout=10)
        if thread.is_alive():
            server.force_exit = True
            thread.join(timeout=5)
        sock.close()
        with contextlib.suppress(OSError):
            StateDir(center.sources.state_dir).web_url.unlink()
