"""The command center as a test meets it: a lab served by a real `overnight up`, and the
Debian chromium the browser tests drive."""

from __future__ import annotations

import contextlib
import os
import shlex
import subprocess
import sys
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from playwright.sync_api import Page

from overnight.records import Event
from overnight.sessions import wait_until
from overnight.testing import FakeProvider
from tests.helpers import REPO
from tests.helpers.labs import TOY_SCRIPT, claude_agent, fake_anthropic, make_lab
from tests.helpers.processes import OVERNIGHT, start, stop
from tests.helpers.store import latest_agents, latest_events

STANDIN = REPO / "benchmarks" / "_standin_claude.py"

SCRIPT = """\
import time
X = 0.5
Y = 5
time.sleep({sleep})
print("training...")
print(f"score: {{(X - 3) ** 2 + (Y - 1) ** 2}}")
"""


@dataclass
class WebLab:
    """A lab served by `overnight up`, with its command center's address and token."""

    root: Path
    proc: subprocess.Popen[str]
    url: str
    """The ready-to-click URL, token included."""
    env: dict[str, str]
    tmux_socket: Path | None = None
    fake: FakeProvider | None = None
    cookies: dict[str, str] = field(default_factory=dict)

    @property
    def base(self) -> str:
        return self.url.split("/?", 1)[0]

    @property
    def token(self) -> str:
        return self.url.split("token=", 1)[1]

    @contextlib.contextmanager
    def client(self) -> Iterator[httpx.Client]:
        """An HTTP client holding a session cookie (from a first visit with the token)."""
        with httpx.Client(base_url=self.base, timeout=30) as client:
            first = client.get(f"/?token={self.token}", follow_redirects=False)
            assert first.status_code == 303, first.text
            yield client

    def csrf(self, client: httpx.Client) -> str:
        page = client.get("/").text
        marker = 'name="csrf-token" content="'
        return page.split(marker, 1)[1].split('"', 1)[0]

    def events(self, kind: str | None = None) -> list[Event]:
        return latest_events(self.root, kind)

    def state(self, agent: str) -> str:
        return next(a.state for a in latest_agents(self.root) if a.name == agent)


def standin(directory: Path) -> Path:
    """The `claude` the agent runs: the stand-in CLI under this venv's python."""
    path = directory / "claude"
    path.write_text(f'#!/bin/sh\nexec {shlex.quote(sys.executable)} -S {STANDIN} "$@"\n')
    path.chmod(0o755)
    return path


def toy_lab(
    root: Path,
    *,
    tuners: int = 2,
    others: Sequence[Mapping[str, Any]] = (),
    gateway: Mapping[str, Any] | None = None,
    sleep: float | None = None,
) -> Path:
    """The command center's toy lab: `tuners` optuna agents, two trials at a time, and
    `others` beside them; each run of it sleeps `sleep` seconds first (if given)."""
    return make_lab(
        root,
        script=TOY_SCRIPT if sleep is None else SCRIPT.format(sleep=sleep),
        lab={"parallel": 2},
        agents=[{"name": "tuner", "count": tuners}, *others],
        gateway=gateway,
    )


@contextlib.contextmanager
def web_lab(
    tmp: Path,
    *,
    claude: bool = False,
    idle_after: str = "2s",
    sleep: float = 0.3,
    extra_args: tuple[str, ...] = (),
    tuners: int = 2,
    others: Sequence[Mapping[str, Any]] = (),
) -> Iterator[WebLab]:
    """`overnight up` on a toy lab for the block, then Ctrl-C (it must stop cleanly); with
    `claude`, a `claude-code` agent (the stand-in CLI) joins the tuners and `others`."""
    with contextlib.ExitStack() as stack:
        env = {**os.environ, "HOME": str(tmp / "home")}
        (tmp / "home").mkdir(exist_ok=True)
        socket_dir: Path | None = None
        fake = None
        gateway = None
        if claude:
            fake = stack.enter_context(FakeProvider("anthropic"))
            others = [*others, claude_agent(idle_after=idle_after, nudge="Go on.")]
            gateway = {
                **fake_anthropic(fake.url, key_env=None),
                "prices": {"claude-fake-1": {"input": 3, "output": 15}},
                "budgets": {"org": {"daily_usd": 5}},
            }
            # a tmux server of its own: other sessions on the machine are not touched
            socket_dir = tmp / "tmux"
            socket_dir.mkdir(mode=0o700, exist_ok=True)
            env["TMUX_TMPDIR"] = str(socket_dir)
            env["OVERNIGHT_CLAUDE"] = str(standin(tmp))
        root = toy_lab(tmp / "lab", tuners=tuners, others=others, gateway=gateway, sleep=sleep)
        proc = start(
            [*OVERNIGHT, "up", str(root), *extra_args],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        url_file = root / ".overnight" / "web.url"
        try:
            wait_until(lambda: url_file.is_file() or proc.poll() is not None, timeout=60)
            if proc.poll() is not None:
                out, err = proc.communicate()
                pytest.fail(f"overnight up exited {proc.returncode}:\n{out}\n{err}")
            lab = WebLab(root, proc, url_file.read_text().strip(), env, fake=fake)
            if socket_dir is not None:
                lab.tmux_socket = socket_dir / f"tmux-{os.getuid()}" / "overnight"
            yield lab
        finally:
            try:
                out, err = stop(proc)
            finally:
                if socket_dir is not None:
                    subprocess.run(
                        ["tmux", "-S", str(socket_dir / f"tmux-{os.getuid()}" / "overnight"),
                         "kill-server"], capture_output=True, check=False,
                    )  # fmt: skip
        assert proc.returncode == 0, out + err  # `up` stopped by a signal exits 0


CHROMIUM = Path("/usr/bin/chromium")
ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]  # fmt: skip
ARTIFACTS = REPO / "test-artifacts"


def shot(page: Page, name: str) -> None:
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / f"{name}.png"))
