"""The lab notebook and fresh conversations, through the real CLIs.

`overnight run` drives the real Claude Code (and Codex) against the lab's gateway,
whose upstream is the scripted fake provider; what is checked is what the model
was sent: the notebook and news of the other agents' trials, `overnight notes` run
by the agent from its sandbox, and, after a conversation ends, a new one that
opens with the brief and carries none of the old messages.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path
from typing import Any

import httpx
import pytest

from overnight.records import Trial, TrialStatus
from overnight.sessions import wait_until
from overnight.store import Store, open_store, store_url
from overnight.testing import FakeProvider, Reply, ToolCall
from overnight.testing.replies import Usage
from tests.helpers.agents import (
    AIDER_EDIT,
    SCRIPT,
    claude_lab,
    openai_cli_lab,
    running,
    states,
)
from tests.helpers.labs import TOY_KNOBS, make_lab
from tests.helpers.processes import run_cli
from tests.helpers.store import latest_events, latest_trials

needs_tmux = pytest.mark.skipif(shutil.which("tmux") is None, reason="needs tmux")


def text(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False)


def tool_results(messages: list[dict[str, Any]]) -> list[str]:
    """What the CLI sent back of each tool call, as text."""
    found = []
    for message in messages:
        content = message.get("content")
        for block in content if isinstance(content, list) else []:
            if isinstance(block, dict) and block.get("type") == "tool_result":
                found.append(text(block.get("content")))
    return found


@needs_tmux
def test_a_claude_code_agent_reads_the_notebook_and_hears_of_another_agents_discarded_trials(
    tmp_path: Path,
) -> None:
    """An optuna agent works beside Claude Code. Claude Code runs `overnight notes` in its
    sandbox (the command center answers it through the gateway), and each later turn's
    message carries the optuna agent's new results, discarded ones included."""
    script = [
        Reply(tool_calls=[ToolCall("Bash", {"command": "overnight notes", "description": "n"})]),
        Reply(text="I have read the notebook."),
    ]
    with FakeProvider("anthropic", script=script, mode="conversation") as fake:
        lab, env = claude_lab(
            tmp_path, fake, idle_after="1s", fresh_every=0, knobs=TOY_KNOBS, others=[{"name": "t"}]
        )

        def heard_of_a_discard() -> bool:
            discarded = [
                t for t in latest_trials(lab) if t.agent == "t" and t.status == "discarded"
            ]
            lasts = [text(r["body"]["messages"][-1]) for r in fake.requests[2:]]
            return any(
                f"#{t.number} t discarded" in m and t.description in m
                for t in discarded
                for m in lasts
            )

        with running(lab, env):
            wait_until(heard_of_a_discard, timeout=120)
            # the command center gives the notebook to an agent's key, and to nobody else
            url = (lab / ".overnight" / "gateway.url").read_text().strip() + "/overnight/v1/notes"
            key = (lab / ".overnight" / "keys" / "claude").read_text().strip()
            assert httpx.get(url, headers={"authorization": "Bearer nope"}).status_code == 401
            answer = httpx.get(url, headers={"authorization": f"Bearer {key}"})
            assert answer.status_code == 200 and "metric: score" in answer.json()["notes"]

    # `overnight notes` in the agent's sandbox printed the notebook, its own trials marked
    notes = [r for r in fake.requests if tool_results(r["body"]["messages"])]
    assert notes, "Claude Code never sent the tool's result"
    printed = tool_results(notes[0]["body"]["messages"])[0]
    assert "metric: score (lower is better)" in printed
    assert "baseline (the unchanged code): score=22.25" in printed

    # a later turn: the nudge, then what the optuna agent found since the previous turn
    news = next(
        text(r["body"]["messages"][-1])
        for r in fake.requests
        if "New in the lab notebook since your last turn" in text(r["body"]["messages"][-1])
    )
    assert "NUDGE-7" in news
    assert "vs the best then" in news and "vs baseline" in news

    # a person reads the same notebook, with the run stopped
    person = run_cli("notes", str(lab))
    assert person.returncode == 0, person.stderr
    done = [t for t in latest_trials(lab) if t.agent == "t" and t.status == "discarded"]
    assert done and f"#{done[-1].number} t discarded score=" in person.stdout
    assert done[-1].description in person.stdout
    # and from the agent's worktree, with no command center to ask: its store, its run
    (worktree,) = (lab / ".overnight" / "worktrees").glob("*/claude")
    there = run_cli("notes", str(worktree))
    assert there.returncode == 0, there.stderr
    assert there.stdout == person.stdout


def finish(store: Store, trial: Trial, status: TrialStatus, at: float, **fields: Any) -> None:
    """Walk a trial through the state machine to `status`, finishing at `at`."""
    steps = {TrialStatus.crashed: [TrialStatus.applied, TrialStatus.checked, TrialStatus.running]}
    path = steps.get(
        status,
        [TrialStatus.applied, TrialStatus.checked, TrialStatus.running, TrialStatus.measured],
    )
    for step in path:
        extra: dict[str, Any] = {}
        if step is TrialStatus.applied:
            extra["candidate_commit"] = "1" * 40
        if step is TrialStatus.measured:
            extra["metric"] = fields["metric"]
        store.update_trial(trial.id, step, **extra)
    store.update_trial(
        trial.id, status, finished_at=at, **{k: v for k, v in fields.items() if k != "metric"}
    )


def test_overnight_notes_shows_kept_trials_first_then_the_newest_within_its_cap(
    tmp_path: Path,
) -> None:
    lab = make_lab(tmp_path / "lab")
    store = open_store(store_url(lab))
    try:
        store.create_run("r1", "toy", "0" * 40, {}, {})
        base = store.add_trial("r1", "baseline", "0" * 40, "baseline", {})
        finish(store, base, TrialStatus.kept, 1.0, metric=22.25)
        good = store.add_trial("r1", "t-1", "0" * 40, "X to 3", {})
        finish(store, good, TrialStatus.kept, 2.0, metric=16.0)
        for n in range(150):
            t = store.add_trial("r1", "t-2", "0" * 40, f"idea {n}: " + "words " * 25, {})
            finish(store, t, TrialStatus.discarded, 3.0 + n, metric=30.0, reason="not better")
        broke = store.add_trial("r1", "t-1", "0" * 40, "divide by zero", {})
        finish(store, broke, TrialStatus.crashed, 500.0, reason="run exited with code 1\nTraceback")
        store.add_trial("r1", "t-2", "0" * 40, "trying Z", {})
    finally:
        store.close()
    result = run_cli("notes", str(lab))
    assert result.returncode == 0, result.stderr
    notes = result.stdout
    assert "trials: 152 by 2 agents (150 discarded, 1 kept, 1 crashed)" in notes
    assert "baseline (the unchanged code): score=22.25" in notes
    assert "best so far: score=16 (-28.1% vs baseline) by t-1 in #2: X to 3" in notes
    kept = "#2 t-1 kept score=16 (NEW BEST, -6.25 vs the best then, -28.1% vs baseline): X to 3"
    newest = f"#{broke.number} t-1 crashed: divide by zero [run exited with code 1]"
    first_idea = "#152 t-2 discarded score=30 (+14 vs the best then, +34.8% vs baseline): idea 149"
    order = [notes.index(s) for s in (kept, "#154 t-2: trying Z", newest, first_idea)]
    assert order == sorted(order)  # what works, what runs, then the newest first
    assert "Traceback" not in notes
    # the cap: the older trials are counted, not shown
    shown = len(re.findall(r"^#\d+ t-2 discarded", notes, re.M))
    assert 10 < shown < 150 and len(notes) < 12_500
    assert f"... {150 - shown} older trials not shown ({150 - shown} discarded)" in notes
    assert "idea 0:" not in notes


def refreshed(lab: Path) -> list[dict[str, Any]]:
    return [dict(e.payload) for e in latest_events(lab, "agent.refreshed")]


@needs_tmux
def test_after_fresh_every_trials_a_new_conversation_opens_with_the_brief(
    tmp_path: Path,
) -> None:
    """fresh_every = 1: the turn that kept a trial ends its conversation; the next request
    is a new conversation: the program and rules, the notebook with that trial, the agent's
    best diff, and nothing of the old messages."""
    with FakeProvider("anthropic", script=SCRIPT, mode="conversation") as fake:
        lab, env = claude_lab(tmp_path, fake, fresh_every=1)
        with running(lab, env):
            wait_until(lambda: refreshed(lab) != [] and states(lab)[-1] == "idle", timeout=120)
    (refresh,) = refreshed(lab)
    assert refresh["reason"] == "every 1 trials" and refresh["trials"] == 1
    assert refresh["old"] and refresh["new"] and refresh["old"] != refresh["new"]

    bodies = [r["body"] for r in fake.requests]
    first = next(
        i for i, b in enumerate(bodies) if "This is a fresh conversation" in text(b["messages"])
    )
    old, new = bodies[first - 1], bodies[first]
    calls = [
        block["id"]
        for m in old["messages"]
        if m["role"] == "assistant"
        for block in m["content"]
        if block.get("type") == "tool_use"
    ]
    assert calls and tool_results(old["messages"])  # the old conversation, mid-way
    # none of the old messages: one user message, no earlier reply, no tool call or result
    assert [m["role"] for m in new["messages"] if m["role"] != "system"] == ["user"]
    assert tool_results(new["messages"]) == []
    assert not any(call in text(new) for call in calls)
    assert "sed -i" not in text(new["messages"])
    brief = text(new["messages"])
    (kept,) = [t for t in latest_trials(lab) if t.agent == "claude" and t.status == "kept"]
    assert f"#{kept.number} claude (you) kept score=0 (NEW BEST" in brief
    assert "X=3, Y=1: the optimum" in brief
    assert "-X = 0.5" in brief and "+X = 3" in brief  # the best diff against the run's start
    system = text(new["system"])
    assert "You are claude, a research agent" in system and "Make score small." in system
    assert "overnight notes" in system


@needs_tmux
def test_a_conversation_whose_context_is_nearly_full_is_refreshed(tmp_path: Path) -> None:
    """Claude Code reports each request's prompt size and the model's window: a turn that
    ends past 80% of the window ends the conversation."""
    full = Reply(
        text="That was a lot of reading.", usage=Usage(input_tokens=950_000, output_tokens=7)
    )
    with FakeProvider("anthropic", script=[full]) as fake:
        lab, env = claude_lab(tmp_path, fake, fresh_every=0)
        with running(lab, env):
            wait_until(lambda: refreshed(lab) != [] and states(lab)[-1] == "idle", timeout=120)
    (refresh,) = refreshed(lab)
    assert refresh["reason"] == "context full"
    assert refresh["context_used"] == 950_000
    assert refresh["context_used"] >= 0.8 * refresh["context_window"]
    last = fake.requests[-1]["body"]
    assert "This is a fresh conversation" in text(last["messages"])
    assert "a lot of reading" not in text(last["messages"])


@needs_tmux
def test_codex_reports_a_nearly_full_context_in_its_session_file(tmp_path: Path) -> None:
    """`codex exec --json` sums a turn's usage; its session file says what the latest
    request filled of the model's window, and that ends the conversation."""
    full = Reply(
        text="That was a lot of reading.", usage=Usage(input_tokens=250_000, output_tokens=7)
    )
    with FakeProvider("openai", script=[full]) as fake:
        lab, env = openai_cli_lab(tmp_path, fake, fresh_every=0)
        with running(lab, env):
            wait_until(lambda: refreshed(lab) != [] and states(lab)[-1] == "idle", timeout=120)
    (refresh,) = refreshed(lab)
    assert refresh["reason"] == "context full"
    assert refresh["context_used"] == 250_007
    assert refresh["context_used"] >= 0.8 * refresh["context_window"]
    assert refresh["old"] and refresh["new"] and refresh["old"] != refresh["new"]
    last = fake.requests[-1]["body"]["messages"]
    assert "This is a fresh conversation" in text(last) and "a lot of reading" not in text(last)


@needs_tmux
def test_a_refreshed_aider_agent_starts_a_new_chat_history(tmp_path: Path) -> None:
    """aider's conversation is its chat history file: a fresh one starts empty, with the
    instructions and the brief."""
    with FakeProvider("openai", script=[Reply(text=AIDER_EDIT)]) as fake:
        lab, env = openai_cli_lab(tmp_path, fake, "aider", fresh_every=1)
        with running(lab, env):
            wait_until(lambda: refreshed(lab) != [] and states(lab)[-1] == "idle", timeout=120)
    (refresh,) = refreshed(lab)
    assert refresh["reason"] == "every 1 trials" and refresh["old"] != refresh["new"]
    chats = [r["body"]["messages"] for r in fake.requests if r["path"] == "/v1/chat/completions"]
    new = text(chats[-1])
    assert "This is a fresh conversation" in new and "You are aider, a research agent" in new
    assert "+X = 3" in new  # the best diff
    assert "X = 0.5\\n=======\\nX = 3" not in new  # the old reply's edit is not in it
