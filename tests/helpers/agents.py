"""External CLI agents driven by a real `overnight run`: their labs, the run for the
length of a block, and what the store says the agents did."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

from overnight.records import Event
from overnight.store import open_store, store_url
from overnight.testing import FakeProvider, Reply, ToolCall
from tests.helpers.clis import claude_cli
from tests.helpers.labs import TOY_SCRIPT, make_lab
from tests.helpers.processes import OVERNIGHT

AGENT_CONFIG = """\
[lab]
name = "toy"
editable = ["exp.py"]
protected = ["judge.py"]
run = "{python} exp.py"
metric = "score"
budget = "20s"

[[agents]]
name = "claude"
runtime = "claude-code"
model = "lab-model"
idle_after = "{idle_after}"
nudge = "Keep going: NUDGE-7"

[gateway]
port = 0

[[gateway.upstreams]]
name = "fake"
protocol = "anthropic"
base_url = "{url}"
credentials = [{{ name = "main", env = "FAKE_KEY" }}]

[gateway.models]
lab-model = ["fake/claude-fake-1"]
"""

TRY = "sed -i 's/^X = .*/X = 3/; s/^Y = .*/Y = 1/' exp.py && overnight try 'X=3, Y=1: the optimum'"
SCRIPT = [
    Reply(tool_calls=[ToolCall("Bash", {"command": TRY, "description": "submit"})]),
    Reply(text="Submitted: it was kept."),
]


def events(lab: Path, kind: str | None = None) -> list[Event]:
    store = open_store(store_url(lab))
    try:
        run = store.latest_run("toy")
        if run is None:
            return []
        return [e for e in store.events(run.id, limit=100000) if kind is None or e.kind == kind]
    finally:
        store.close()


def states(lab: Path) -> list[str]:
    return [str(e.payload["state"]) for e in events(lab, "agent.state")]


def claude_lab(
    tmp_path: Path, fake: FakeProvider, idle_after: str = "1h", script: str = TOY_SCRIPT
) -> tuple[Path, dict[str, str]]:
    """A lab whose agent is the real Claude Code CLI talking to `fake`, and the
    environment to run it in (a HOME of its own, so no user settings leak in)."""
    lab = make_lab(
        tmp_path / "lab",
        script=script,
        config=AGENT_CONFIG.format(python=sys.executable, url=fake.url, idle_after=idle_after),
    )
    home = tmp_path / "home"
    home.mkdir()
    env = {
        **os.environ,
        "HOME": str(home),
        "FAKE_KEY": "sk-fake",
        "OVERNIGHT_CLAUDE": str(claude_cli()),
    }
    return lab, env


@contextlib.contextmanager
def running(lab: Path, env: dict[str, str], umask: int = -1) -> Iterator[subprocess.Popen[str]]:
    """`overnight run LAB` for the length of the block, then Ctrl-C: it must exit 130."""
    with subprocess.Popen(
        [*OVERNIGHT, "run", str(lab)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        umask=umask,
    ) as proc:
        try:
            yield proc
        finally:
            proc.send_signal(signal.SIGINT)
            out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, out + err


CODEX_CONFIG = """\
[lab]
name = "toy"
editable = ["exp.py"]
protected = ["judge.py"]
run = "{python} exp.py"
metric = "score"
budget = "20s"

[[agents]]
name = "codex"
runtime = "codex"
model = "gpt-5.5"

[gateway]
port = 0

[[gateway.upstreams]]
name = "local"
protocol = "openai"
base_url = "{url}/v1"
responses_api = false

[gateway.models]
"gpt-5.5" = ["local/gpt-fake-1"]
"""

AIDER_EDIT = (
    "DESCRIPTION: X to its optimum, 3\n\n"
    "exp.py\n```\n<<<<<<< SEARCH\nX = 0.5\n=======\nX = 3\n>>>>>>> REPLACE\n```\n"
)
