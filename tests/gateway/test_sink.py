"""The gateway's metering into the store when `overnight run` dies without warning.

`StoreSink` hands attempts to a writer process; a `kill -9` of `overnight run`
must neither leave that process behind nor lose what was metered before it.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path

import anthropic

from overnight.sessions import wait_until
from overnight.store import open_store, store_url
from overnight.testing import FakeProvider
from tests.helpers.processes import OVERNIGHT, process_gone


def _children(pid: int) -> list[tuple[int, str]]:
    """(pid, command line) of each child process of `pid`."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
            found.append((int(entry.name), cmdline))
    return found


def test_a_killed_run_leaves_no_store_writer_behind_and_keeps_what_was_metered(
    coder_lab: Callable[[str, float], Path],
    spawn: Callable[..., subprocess.Popen[str]],
) -> None:
    """Killed while an agent is calling through its gateway. The gateway hands each
    attempt to its writer within `StoreSink.FORWARD_EVERY` (10 ms); every answer the
    client had a full second before the kill must be in the store."""
    with FakeProvider("anthropic", api_keys={"sk-upstream"}) as fake:
        lab = coder_lab(fake.url, 100.0)
        proc = spawn(
            [*OVERNIGHT, "run", str(lab), "--for", "10m"],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
            env={**os.environ, "FAKE_ANTHROPIC_KEY": "sk-upstream"},
        )
        assert proc.stdout is not None
        found = threading.Event()
        url: list[str] = []

        def read() -> None:  # drains the run's output, so it never blocks on a full pipe
            assert proc.stdout is not None
            for line in proc.stdout:
                match = re.search(r"gateway: (http://\S+)", line)
                if match and not url:
                    url.append(match.group(1))
                    found.set()

        answered: list[float] = []  # when each answer had arrived
        stop = threading.Event()

        def agent() -> None:  # an agent calling through the gateway until it is gone
            key = (lab / ".overnight" / "keys" / "coder").read_text().strip()
            with anthropic.Anthropic(base_url=url[0], api_key=key, max_retries=0) as client:
                while not stop.is_set():
                    try:
                        client.messages.create(
                            model="smart",
                            max_tokens=10,
                            messages=[{"role": "user", "content": "hi"}],
                        )
                    except anthropic.APIConnectionError:
                        return
                    answered.append(time.monotonic())

        reader = threading.Thread(target=read, daemon=True)
        reader.start()
        caller = threading.Thread(target=agent, daemon=True)
        try:
            assert found.wait(120), "overnight run did not start its gateway"
            writers = [pid for pid, cmd in _children(proc.pid) if "_writer_main" in cmd]
            assert len(writers) == 1, _children(proc.pid)
            caller.start()
            wait_until(
                lambda: len(answered) >= 20 and time.monotonic() - answered[0] > 1.5, timeout=60
            )
        finally:
            os.kill(proc.pid, signal.SIGKILL)
            killed = time.monotonic()
            proc.wait()
            stop.set()
            caller.join(30)
            reader.join(10)
            proc.stdout.close()
        wait_until(lambda: process_gone(writers[0]), timeout=20)
        metered = sum(1 for t in answered if t < killed - 1.0)
        store = open_store(store_url(lab))
        try:
            attempts = store.attempts("toy", agent="coder")
        finally:
            store.close()
        assert metered >= 1
        assert metered <= len(attempts) <= len(answered) + 1  # + the one in flight
        assert {(a["outcome"], a["input_tokens"] > 0) for a in attempts} == {("ok", True)}
