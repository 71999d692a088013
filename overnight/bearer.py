"""One JSON request to the command center, authenticated with a bearer key.

What `overnight try` (the desk) and an agent's governance (`governance.remote`) share
when they ask the command center something: the request and its raw answer. Each caller
words its own errors (a refusal that fails closed, or a fix for the person at the
terminal), so this raises only what the connection raised.
"""

from __future__ import annotations

import http.client
import json
import urllib.parse
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Answer:
    status: int
    raw: bytes

    def json(self) -> Any:
        """The body as JSON; None when it is not JSON."""
        try:
            return json.loads(self.raw)
        except ValueError:
            return None


def call(
    url: str, key: str, method: str, path: str, body: dict[str, Any] | None, timeout: float
) -> Answer:
    """`method path` at the server `url` names; OSError when it cannot be asked."""
    parts = urllib.parse.urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname or "127.0.0.1", parts.port, timeout=timeout)
    try:
        conn.request(
            method,
            path,
            None if body is None else json.dumps(body),
            {"authorization": f"Bearer {key}", "content-type": "application/json"},
        )
        response = conn.getresponse()
        return Answer(response.status, response.read())
    finally:
        conn.close()
