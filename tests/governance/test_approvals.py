"""The approvals inbox: agents wait, people answer from the CLI, nothing is lost or forged."""

from __future__ import annotations

import getpass
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from overnight.governance.approvals import ApprovalError, Approvals
from overnight.governance.audit import ENV_KEY, AuditKey, Auditor, load_key, verify
from overnight.records import Approval
from overnight.sessions import wait_until
from overnight.store import SqlStore, open_store, store_url
from tests.helpers.labs import make_lab
from tests.helpers.processes import OVERNIGHT, run_cli

ACTION = {"kind": "shell", "command": "pip install requests", "agent": "t"}


@dataclass
class Lab:
    root: Path
    run_id: str
    key: AuditKey

    @property
    def env(self) -> dict[str, str]:
        return {ENV_KEY: str(self.key.path)}

    def store(self) -> SqlStore:
        store = open_store(store_url(self.root))
        assert isinstance(store, SqlStore)
        return store


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Lab:
    """A lab after a real run: a run id, an agent `t` and its worktree."""
    root = tmp_path_factory.mktemp("approvals")
    path = make_lab(root / "lab")
    done = run_cli("run", str(path), "--trials", "1")
    assert done.returncode == 0, done.stderr
    # the key `overnight run` signed the lab's chain with (the suite's, see conftest)
    key = load_key(Path(os.environ[ENV_KEY]), create=True)
    assert key is not None
    store = open_store(store_url(path))
    run = store.latest_run("toy")
    store.close()
    assert run is not None
    return Lab(path, run.id, key)


@pytest.fixture
def inbox(lab: Lab) -> Iterator[Approvals]:
    store = lab.store()
    auditor = Auditor(store, "toy", key=lab.key, lab_root=lab.root)
    inbox = Approvals(store, "toy", auditor=auditor, poll=0.02)
    yield inbox
    auditor.close()
    verdict = verify(store, "toy", lab.key)
    store.close()
    assert verdict.ok, verdict.summary()  # every test leaves an intact audit chain


def _audit_of(inbox: Approvals, approval_id: str) -> list[tuple[str, str]]:
    return [
        (r.kind, r.actor)
        for r in inbox.store.audit_records("toy", limit=100_000)
        if r.subject == f"approval {approval_id}"
    ]


def test_an_agent_waits_and_resumes_when_approved_from_the_cli(lab: Lab, inbox: Approvals) -> None:
    approval = inbox.request(
        lab.run_id, "t", ACTION, "network installs need review", risk=0.62, correlation="r:7"
    )
    assert len(approval.id) == 6 and approval.status == "pending"
    answered: list[Approval] = []
    waiter = threading.Thread(target=lambda: answered.append(inbox.wait(approval.id)))
    waiter.start()
    wait_until(lambda: inbox.store.agents(lab.run_id)[0].state == "waiting", 10)

    listed = run_cli("approvals", str(lab.root), env=lab.env)
    assert listed.returncode == 0, listed.stderr
    assert approval.id in listed.stdout and "pip install requests" in listed.stdout
    assert "network installs need review" in listed.stdout and "risk 0.62" in listed.stdout

    done = run_cli(
        "approve", approval.id.upper(), "--note", "pinned version", "-C", str(lab.root),
        env=lab.env,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert f"approval {approval.id} approved" in done.stdout
    waiter.join(10)
    assert [a.status for a in answered] == ["approved"]
    assert answered[0].note == "pinned version" and answered[0].answered_by == (
        f"{getpass.getuser()} (cli)"
    )
    agent = inbox.store.agents(lab.run_id)[0]
    assert agent.state == "working"
    assert _audit_of(inbox, approval.id) == [
        ("approval.requested", "t"),
        ("approval.approved", f"{getpass.getuser()} (cli)"),
    ]
    assert run_cli("approvals", str(lab.root)).stdout.strip() == "no pending approvals"


def test_an_answer_cannot_be_changed(lab: Lab, inbox: Approvals) -> None:
    approval = inbox.request(lab.run_id, "t", ACTION, "review")
    denied = run_cli("deny", approval.id, "--note", "no installs", "-C", str(lab.root), env=lab.env)
    assert denied.returncode == 0 and "denied" in denied.stdout
    again = run_cli("approve", approval.id, "-C", str(lab.root), env=lab.env)
    assert again.returncode == 2
    assert f"approval {approval.id} was already denied by" in again.stderr
    assert "(note: no installs)" in again.stderr and "cannot be changed" in again.stderr
    unknown = run_cli("approve", "zzzzzz", "-C", str(lab.root), env=lab.env)
    assert unknown.returncode == 2 and "no approval 'zzzzzz'" in unknown.stderr
    assert inbox.wait(approval.id).status == "denied"  # an answered one returns at once


def test_an_unanswered_approval_expires_and_is_not_denied(lab: Lab, inbox: Approvals) -> None:
    approval = inbox.request(lab.run_id, "t", ACTION, "review", timeout=0.3)
    ended = inbox.wait(approval.id, timeout=30)
    assert ended.status == "expired" and ended.answered_at == ended.expires_at
    assert ended.answered_by is None
    late = run_cli("approve", approval.id, "-C", str(lab.root), env=lab.env)
    assert late.returncode == 2
    assert f"approval {approval.id} expired at" in late.stderr
    assert "can no longer be approved" in late.stderr
    assert _audit_of(inbox, approval.id) == [
        ("approval.requested", "t"),
        ("approval.expired", "overnight"),
    ]


def test_expiry_is_recorded_by_the_sweep_even_if_nobody_waits(lab: Lab, inbox: Approvals) -> None:
    approval = inbox.request(lab.run_id, "t", ACTION, "review", timeout=-1)
    assert inbox.store.get_approval(approval.id).status == "pending"  # type: ignore[union-attr]
    assert approval.id not in [a.id for a in inbox.pending()]  # the listing sweeps first
    assert inbox.store.get_approval(approval.id).status == "expired"  # type: ignore[union-attr]
    assert inbox.sweep() == []


def test_the_inbox_survives_a_restart(lab: Lab) -> None:
    store = lab.store()
    approval = Approvals(store, "toy").request(lab.run_id, "t", ACTION, "review")
    store.close()
    again = lab.store()
    try:
        inbox = Approvals(again, "toy", auditor=Auditor(again, "toy", key=lab.key))
        assert approval.id in [a.id for a in inbox.pending()]
        assert inbox.answer(approval.id, False, "after a restart", by="me").status == "denied"
        with pytest.raises(ApprovalError, match="already denied by me"):
            inbox.answer(approval.id, True, by="me")
    finally:
        again.close()


def test_no_agent_can_answer_an_approval(lab: Lab, inbox: Approvals) -> None:
    approval = inbox.request(lab.run_id, "t", ACTION, "review")
    args = ("approve", approval.id, "-C", str(lab.root))

    in_session = run_cli(*args, env={**lab.env, "OVERNIGHT_SESSION": "overnight-toy-t"})
    assert in_session.returncode == 2
    assert "refused: no agent can answer an approval" in in_session.stderr
    assert "OVERNIGHT_SESSION is set" in in_session.stderr

    worktree = next((lab.root / ".overnight" / "worktrees" / lab.run_id).iterdir())
    from_worktree = subprocess.run(
        [*OVERNIGHT, *args], cwd=worktree, capture_output=True, text=True,
        env={**os.environ, **lab.env}, timeout=60,
    )  # fmt: skip
    assert from_worktree.returncode == 2 and "inside an agent's worktree" in from_worktree.stderr

    # clearing the variable does not help: the session it runs under still has it
    shell = f"env -u OVERNIGHT_SESSION {sys.executable} -m overnight {' '.join(args)}"
    unset = subprocess.run(
        ["sh", "-c", shell], capture_output=True, text=True, timeout=60,
        env={**os.environ, **lab.env, "OVERNIGHT_SESSION": "overnight-toy-t"},
    )  # fmt: skip
    assert unset.returncode == 2 and "belongs to an agent's session" in unset.stderr

    assert inbox.get(approval.id).status == "pending"  # type: ignore[union-attr]
    assert inbox.answer(approval.id, True, by="me").status == "approved"
