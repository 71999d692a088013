"""Brownout, end to end: the provider goes down in the middle of `overnight run`, the llm agent
pauses (or the optimizer keeps the lab moving), the provider comes back, the agent resumes —
and every trial is accounted for exactly once."""

from __future__ import annotations

import json
import os
import subprocess
import urllib.request
import uuid
from pathlib import Path

import pytest

from overnight.proposers.edits import Edit, render
from overnight.records import Event, Trial, TrialStatus
from overnight.sessions import wait_until
from overnight.testing import FakeProvider, Reply
from tests.helpers.labs import TOY_KNOBS, fake_openai, llm_agent, make_lab
from tests.helpers.processes import OVERNIGHT, run_cli, started
from tests.helpers.store import latest_events, latest_trials

TRIALS = 16  # room for the optimizer during the outage, and the llm agent after it

# Each run of exp.py takes one ticket from a directory the test fills, so the test, not
# the machine's speed, decides how many trials run in each phase of the outage.
SCRIPT = """\
import os, time
X = 0.5
TICKETS = {tickets!r}
while True:
    names = sorted(os.listdir(TICKETS))
    try:
        os.remove(os.path.join(TICKETS, names[0]))
        break
    except (IndexError, FileNotFoundError):
        time.sleep(0.02)
print(f"score: {{(X - 3) ** 2}}")
"""


def grant(tickets: Path, count: int) -> None:
    for _ in range(count):
        (tickets / uuid.uuid4().hex).touch()


def breakers(lab: Path) -> set[str]:
    """The states of every candidate of the gateway's routes, from its /health."""
    url = (lab / ".overnight" / "gateway.url").read_text().strip()
    with urllib.request.urlopen(f"{url}/health", timeout=10) as response:
        health = json.load(response)
    return {c["state"] for r in health["routes"] for c in r["candidates"]}


def notes(count: int) -> list[Reply]:
    """Replies that each add a note: a real change, judged like any other."""
    return [
        Reply(text=render(f"note {i}", [Edit(f"notes/n{i}.txt", "", f"idea {i}\n")]))
        for i in range(count)
    ]


def read(lab: Path) -> tuple[list[Trial], list[Event]]:
    return latest_trials(lab), latest_events(lab)


def kinds(lab: Path, kind: str) -> list[Event]:
    return [e for e in read(lab)[1] if e.kind == kind]


@pytest.mark.parametrize("mode", ["pause", "optimize"])
def test_an_outage_mid_run_pauses_or_optimizes_then_resumes(tmp_path: Path, mode: str) -> None:
    tickets = tmp_path / "tickets"
    tickets.mkdir()
    # the baseline's three runs (they measure the noise floor) and a first trial, before
    # the outage
    grant(tickets, 4)
    with FakeProvider("openai") as fake:
        fake.enqueue(*notes(40))
        lab = make_lab(
            tmp_path / "lab",
            script=SCRIPT.format(tickets=str(tickets)),
            lab={
                "editable": ["exp.py", "notes/*.txt"],
                "grace": None,
                # the experiment takes its tickets from outside its worktree
                "writable": [str(tickets)],
            },
            knobs=TOY_KNOBS[:1],
            agents=[llm_agent(on_brownout=mode)],
            gateway={
                **fake_openai(fake.url),
                "breaker": {"failures": 1, "cooldown": "1s", "max_cooldown": "1s"},
            },
            files={"notes/seed.txt": "seed\n"},
        )
        with started(
            [*OVERNIGHT, "run", str(lab), "--trials", str(TRIALS)],
            env=dict(os.environ),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        ) as proc:
            wait_until(
                lambda: any(t.agent == "coder" and t.status.final for t in read(lab)[0]),
                timeout=60,
            )
            fake.fault("status", code=503, times=None)  # the provider goes down
            grant(tickets, 1)  # for an llm trial proposed just before the outage, if any
            wait_until(lambda: kinds(lab, "agent.brownout") != [], timeout=30)
            if mode == "optimize":  # the optimizer keeps the lab moving meanwhile
                grant(tickets, 2)
                wait_until(
                    lambda: (
                        sum("optuna_trial" in t.proposal and t.status.final for t in read(lab)[0])
                        >= 2
                    ),
                    timeout=60,
                )
            else:
                wait_until(
                    lambda: [e.payload["state"] for e in kinds(lab, "agent.state")][-1] == "paused",
                    timeout=10,
                )
            fake.clear_faults()  # and comes back: once its breaker lets a probe through,
            wait_until(lambda: "open" not in breakers(lab), timeout=30)
            grant(tickets, 2 * TRIALS)  # the agent's next probe finds it up
            out, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, out + err

    trials, events = read(lab)
    (brownout,) = [e for e in events if e.kind == "agent.brownout"]
    (recovered,) = [e for e in events if e.kind == "agent.recovered"]
    assert brownout.payload["mode"] == mode and recovered.payload["lasted_s"] > 0
    during = [t for t in trials if t.number in recovered.payload["trials"]]
    if mode == "optimize":
        assert len(during) >= 2 and all("optuna_trial" in t.proposal for t in during)
    else:
        assert during == []
    # after the recovery the llm agent went on thinking with the model
    assert any(t.created_at > recovered.at and "edits" in t.proposal for t in trials)
    # every trial is accounted for once: all final, numbers unique, the allowance honoured
    assert all(t.status.final for t in trials)
    assert len({t.number for t in trials}) == len(trials)
    tried = [t for t in trials if t.agent == "coder" and t.status is not TrialStatus.interrupted]
    assert len(tried) == TRIALS
    unproposed = [t for t in trials if t.status is TrialStatus.interrupted]
    assert all("could not propose" in (t.reason or "") for t in unproposed)
    ledger = run_cli("ledger", str(lab), "--tsv").stdout
    assert all(f"\t{t.number}\tcoder\t" in ledger for t in tried)
