#!/usr/bin/env python3
"""A stand-in for the `claude` CLI, cheap enough to run fifty agents at once.

Not a benchmark itself: `agents_scale.py` points the `claude-code` runtime at it
(`OVERNIGHT_CLAUDE`). It takes the argv `ClaudeCode.turn()` builds, makes one
real `POST /v1/messages` through the gateway (`ANTHROPIC_BASE_URL`,
`ANTHROPIC_API_KEY`), and prints stream-json lines as Claude Code does: a
`system`/`init` line, an `assistant` line with the reply, a `result` line.

While the file named by `$OVERNIGHT_BENCH_GATE` is locked, a turn waits before
its request, like an agent whose model is slow to answer. Just before the
`result` line it appends `<agent> <epoch> <request seconds>` to the file named
by `$OVERNIGHT_BENCH_TURNS` (one `write`, so lines from many agents never
interleave): the moment the turn ends, which the benchmark compares with the
`idle` state the agent process records for it.

Standard library only, few imports, so it starts fast (`python -S`).
"""

from __future__ import annotations

import json
import os
import socket
import sys
import time
from typing import Any


def option(argv: list[str], name: str) -> str | None:
    return argv[argv.index(name) + 1] if name in argv[:-1] else None


def emit(line: dict[str, object]) -> None:
    sys.stdout.write(json.dumps(line) + "\n")
    sys.stdout.flush()


def post(url: str, path: str, headers: dict[str, str], body: bytes) -> tuple[int, bytes]:
    """One HTTP/1.1 request on a fresh connection (the gateway is plain HTTP on loopback).

    A raw socket rather than http.client: importing http.client (email, ssl) doubles
    this script's start-up, ~27 ms of CPU per turn, and fifty agents share two cores.
    """
    host, _, port = url.removeprefix("http://").rstrip("/").partition(":")
    head = f"POST {path} HTTP/1.1\r\nhost: {host}:{port}\r\nconnection: close\r\n"
    head += "".join(f"{k}: {v}\r\n" for k, v in headers.items())
    head += f"content-length: {len(body)}\r\n\r\n"
    with socket.create_connection((host, int(port or 80)), timeout=60) as sock:
        sock.sendall(head.encode("latin-1") + body)
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    raw_head, _, payload = b"".join(chunks).partition(b"\r\n\r\n")
    lines = raw_head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    if any(line.lower().replace(" ", "") == "transfer-encoding:chunked" for line in lines[1:]):
        payload = dechunk(payload)
    return status, payload


def dechunk(data: bytes) -> bytes:
    out: list[bytes] = []
    at = 0
    while True:
        eol = data.index(b"\r\n", at)
        size = int(data[at:eol].split(b";")[0], 16)
        if size == 0:
            return b"".join(out)
        out.append(data[eol + 2 : eol + 2 + size])
        at = eol + 2 + size + 2


def ask(prompt: str, model: str, system: str) -> tuple[int, dict[str, Any], float]:
    """One non-streamed `POST /v1/messages` to the gateway: (status, answer, seconds)."""
    body = json.dumps(
        {
            "model": model,
            "max_tokens": 64,
            "system": system,
            "messages": [{"role": "user", "content": prompt}],
        }
    ).encode()
    headers = {
        "content-type": "application/json",
        "x-api-key": os.environ["ANTHROPIC_API_KEY"],
        "anthropic-version": "2023-06-01",
    }
    started = time.perf_counter()
    status, raw = post(os.environ["ANTHROPIC_BASE_URL"], "/v1/messages", headers, body)
    seconds = time.perf_counter() - started
    try:
        answer = json.loads(raw)
    except ValueError:
        answer = {"error": raw[:200].decode(errors="replace")}
    return status, answer if isinstance(answer, dict) else {}, seconds


def wait_at_gate() -> None:
    """Wait, mid-turn, while the benchmark holds `$OVERNIGHT_BENCH_GATE` locked: an agent
    whose model is slow to answer, which is where real agents spend most of their time."""
    gate = os.environ.get("OVERNIGHT_BENCH_GATE")
    if not gate:
        return
    import fcntl

    with open(gate) as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_SH | fcntl.LOCK_NB)
            return
        except BlockingIOError:
            fcntl.flock(fh, fcntl.LOCK_SH)  # blocks, using no CPU, until the gate opens
    # Every waiting agent goes on at once when the gate opens: spread them over a
    # second, or they would keep turning in lockstep, all fifty in the same instant.
    import random

    time.sleep(random.uniform(0.0, 1.0))


def main(argv: list[str]) -> int:
    prompt = option(argv, "-p") or ""
    model = option(argv, "--model") or "default"
    session = option(argv, "--session-id") or option(argv, "--resume") or os.urandom(16).hex()
    emit({"type": "system", "subtype": "init", "session_id": session, "model": model})
    wait_at_gate()
    status, answer, seconds = ask(prompt, model, option(argv, "--append-system-prompt") or "")
    ok = status == 200
    text = " ".join(
        str(block.get("text", ""))
        for block in answer.get("content") or []
        if isinstance(block, dict) and block.get("type") == "text"
    )
    if ok:
        message = {"role": "assistant", "content": [{"type": "text", "text": text or "ok"}]}
        emit({"type": "assistant", "message": message, "session_id": session})
    else:
        text = f"HTTP {status}: {json.dumps(answer)[:300]}"
    record = os.environ.get("OVERNIGHT_BENCH_TURNS")
    if record:
        line = f"{os.environ.get('OVERNIGHT_AGENT', '?')} {time.time():.6f} {seconds:.6f}\n"
        fd = os.open(record, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        try:
            os.write(fd, line.encode())
        finally:
            os.close(fd)
    emit(
        {
            "type": "result",
            "subtype": "success" if ok else "error_during_execution",
            "is_error": not ok,
            "result": text,
            "session_id": session,
        }
    )
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
