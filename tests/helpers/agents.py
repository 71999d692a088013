"""External CLI agents driven by a real `overnight run`: their labs, the run for the
length of a block, and what the store says the agents did."""

from __future__ import annotations

import contextlib
import os
import subprocess
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from overnight.testing import FakeProvider, Reply, ToolCall
from tests.helpers.clis import aider_cli, claude_cli, codex_cli
from tests.helpers.labs import TOY_SCRIPT, claude_agent, fake_anthropic, make_lab
from tests.helpers.processes import OVERNIGHT, start, stop
from tests.helpers.store import latest_events

TRY = "sed -i 's/^X = .*/X = 3/; s/^Y = .*/Y = 1/' exp.py && overnight try 'X=3, Y=1: the optimum'"
SCRIPT = [
    Reply(tool_calls=[ToolCall("Bash", {"command": TRY, "description": "submit"})]),
    Reply(text="Submitted: it was kept."),
]
"""What the fake provider tells Claude Code: move both knobs to the optimum and submit."""

AIDER_EDIT = (
    "DESCRIPTION: X to its optimum, 3\n\n"
    "exp.py\n```\n<<<<<<< SEARCH\nX = 0.5\n=======\nX = 3\n>>>>>>> REPLACE\n```\n"
)


def states(lab: Path) -> list[str]:
    """The states the lab's agents went through, in order."""
    return [str(e.payload["state"]) for e in latest_events(lab, "agent.state")]


def claude_lab(
    tmp_path: Path,
    fake: FakeProvider,
    *,
    script: str = TOY_SCRIPT,
    lab: Mapping[str, Any] | None = None,
    knobs: Sequence[Mapping[str, Any]] = (),
    others: Sequence[Mapping[str, Any]] = (),
    gateway: Mapping[str, Any] | None = None,
    **fields: Any,
) -> tuple[Path, dict[str, str]]:
    """A lab whose agent `claude` is the real Claude Code CLI talking to `fake` (its `fields`
    change idle_after = 1h and a nudge, None drops one), with `others` agents beside it and
    `gateway`'s fields in its [gateway] (prices, say), and the environment to run it in (a
    HOME of its own, so no user settings leak in)."""
    fields = {"idle_after": "1h", "nudge": "Keep going: NUDGE-7", **fields}
    agent = claude_agent(**{k: v for k, v in fields.items() if v is not None})
    root = make_lab(
        tmp_path / "lab",
        script=script,
        lab=lab,
        knobs=knobs,
        agents=[agent, *others],
        gateway={**fake_anthropic(fake.url), **(gateway or {})},
    )
    env = {
        **os.environ,
        "HOME": str(_home(tmp_path)),
        "FAKE_KEY": "sk-fake",
        "OVERNIGHT_CLAUDE": str(claude_cli()),
    }
    return root, env


def openai_cli_lab(
    tmp_path: Path,
    fake: FakeProvider,
    runtime: str = "codex",
    *,
    gateway: Mapping[str, Any] | None = None,
    **fields: Any,
) -> tuple[Path, dict[str, str]]:
    """A lab whose one agent (its `fields` beside them) runs the real Codex or aider CLI
    (`runtime`) against `fake`, an OpenAI server without the Responses API, and the
    environment to run it in (a HOME of its own)."""
    agent = {"name": runtime, "runtime": runtime, "model": "gpt-5.5", **fields}
    upstream = {"name": "local", "protocol": "openai", "base_url": f"{fake.url}/v1"}
    lab = make_lab(
        tmp_path / "lab",
        knobs=(),
        agents=[agent],
        gateway={
            "port": 0,
            "upstreams": [{**upstream, "responses_api": False}],
            "models": {"gpt-5.5": ["local/gpt-fake-1"]},
            **(gateway or {}),
        },
    )
    home = _home(tmp_path)
    env = {**os.environ, "HOME": str(home)}
    if runtime == "aider":
        # aider fetches LiteLLM's price list from GitHub unless its cache is fresh: offline here
        cache = home / ".aider" / "caches"
        cache.mkdir(parents=True)
        (cache / "model_prices_and_context_window.json").write_text('{"none": {}}')
        env["OVERNIGHT_AIDER"] = str(aider_cli())
    else:
        env["OVERNIGHT_CODEX"] = str(codex_cli())
    return lab, env


def _home(tmp_path: Path) -> Path:
    home = tmp_path / "home"
    home.mkdir()
    return home


@contextlib.contextmanager
def running(lab: Path, env: dict[str, str], umask: int = -1) -> Iterator[subprocess.Popen[str]]:
    """`overnight run LAB` for the length of the block, then Ctrl-C: it must exit 130."""
    proc = start(
        [*OVERNIGHT, "run", str(lab)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        umask=umask,
    )
    try:
        yield proc
    finally:
        out, err = stop(proc)
    assert proc.returncode == 130, out + err
