"""Governance wired in: the Claude Code hook failing closed, trials and keeps judged by the
command center, approvals that hold an agent until a human answers, all audited."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from overnight.agents.runtimes import HOOK_SCRIPT
from overnight.proposers.edits import Edit, render
from overnight.records import Approval, TrialStatus
from overnight.sessions import wait_until
from overnight.store import open_store, store_url
from overnight.testing import FakeProvider, Reply, ToolCall
from tests.helpers.agents import claude_lab, running, states
from tests.helpers.labs import fake_openai, llm_agent, make_lab
from tests.helpers.processes import OVERNIGHT, run_cli, started

PAYLOAD = {
    "session_id": "s1",
    "hook_event_name": "PreToolUse",
    "tool_name": "Bash",
    "tool_input": {"command": "ls"},
    "tool_use_id": "toolu_1",
    "cwd": "/tmp",
}


def run_hook(
    url: str, *, timeout: float = 5, payload: object = PAYLOAD
) -> subprocess.CompletedProcess[str]:
    env = {
        "PATH": os.environ["PATH"],
        "OVERNIGHT_HOOK_URL": url,
        "ANTHROPIC_API_KEY": "sk-agent",
        "OVERNIGHT_HOOK_TIMEOUT": str(timeout),
    }
    return subprocess.run(
        [os.path.realpath(sys.executable), "-I", "-S", str(HOOK_SCRIPT)],
        input=json.dumps(payload),
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )


@pytest.fixture
def server() -> Iterator[tuple[str, list[bytes]]]:
    """A loopback TCP server whose answer each test sets: raw bytes, or None to say nothing."""
    sock = socket.create_server(("127.0.0.1", 0))
    answers: list[bytes] = []
    done = threading.Event()

    def serve() -> None:
        while not done.is_set():
            try:
                conn, _ = sock.accept()
            except OSError:
                return
            with conn:
                conn.recv(65536)
                if answers and answers[0]:
                    conn.sendall(answers[0])
                else:
                    done.wait(30)  # hold the connection, answering nothing

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{sock.getsockname()[1]}", answers
    done.set()
    sock.close()


def test_the_hook_denies_when_the_command_center_is_down() -> None:
    free = socket.create_server(("127.0.0.1", 0))
    port = free.getsockname()[1]
    free.close()  # nothing listens there now
    result = run_hook(f"http://127.0.0.1:{port}")
    assert result.returncode == 2, result
    assert "overnight denied this tool call" in result.stderr
    assert "unreachable" in result.stderr and result.stdout == ""


@pytest.mark.parametrize(
    "answer, why",
    [
        (b"HTTP/1.0 200 OK\r\n\r\nnot json", "not JSON"),
        (b'HTTP/1.0 200 OK\r\n\r\n{"decision": "maybe"}', "not allow, deny or review"),
        (b"HTTP/1.0 500 Internal Server Error\r\n\r\noops", "answered 500"),
        (b"garbage", "not HTTP"),
        (None, "timed out"),
    ],
)
def test_the_hook_denies_on_a_reply_it_does_not_understand(
    server: tuple[str, list[bytes]], answer: bytes | None, why: str
) -> None:
    url, answers = server
    answers.append(answer or b"")
    result = run_hook(url, timeout=0.5)
    assert result.returncode == 2, result
    assert why in result.stderr


def test_the_hook_answers_in_the_hook_protocol_and_needs_its_settings(
    server: tuple[str, list[bytes]],
) -> None:
    url, answers = server
    answers.append(b'HTTP/1.0 200 OK\r\n\r\n{"decision": "allow", "reason": "fine"}')
    ok = run_hook(url)
    assert ok.returncode == 0
    out = json.loads(ok.stdout)["hookSpecificOutput"]
    assert out == {
        "hookEventName": "PreToolUse",
        "permissionDecision": "allow",
        "permissionDecisionReason": "overnight: fine",
    }
    missing = run_hook("", payload=PAYLOAD)
    assert missing.returncode == 2 and "OVERNIGHT_HOOK_URL" in missing.stderr


SNEAKY = (
    "python3 -c \"open('judge.py', 'a').write('# judged differently')\" && "
    "overnight try 'a sneaky change to the evaluator'"
)


def audit_export(lab: Path) -> list[dict[str, Any]]:
    out = run_cli("audit", "export", str(lab), "--jsonl").stdout
    return [json.loads(line) for line in out.splitlines() if line.strip()]


@pytest.mark.skipif(shutil.which("tmux") is None, reason="needs tmux")
def test_claude_code_is_governed_tool_call_by_tool_call(tmp_path: Path) -> None:
    """The real Claude Code CLI, asked by its model to force-push (blocked), to write outside
    its worktree (blocked), to push (needs review: it waits, a human approves from the CLI,
    it runs), and to change the protected evaluator in a way the hook does not see (the
    integrity guard rejects the trial) — every step in the audit chain, which verifies."""
    outside = tmp_path / "outside.txt"
    script = [
        Reply(tool_calls=[ToolCall("Bash", {"command": "git push --force origin main"})]),
        Reply(tool_calls=[ToolCall("Write", {"file_path": str(outside), "content": "x\n"})]),
        Reply(tool_calls=[ToolCall("Bash", {"command": "git push origin main"})]),
        Reply(tool_calls=[ToolCall("Bash", {"command": SNEAKY})]),
        Reply(text="All done."),
    ]
    with FakeProvider("anthropic", script=script, mode="conversation") as fake:
        lab, env = claude_lab(tmp_path, fake)
        with running(lab, env):
            pending = wait_for_approval(lab)
            assert "git push origin main" in json.dumps(pending.action)
            wait_until(lambda: states(lab)[-1] == "waiting", timeout=30)
            answered = run_cli("approve", pending.id, "-C", str(lab), "--note", "just this once")
            assert answered.returncode == 0, answered.stderr
            wait_until(lambda: "idle" in states(lab), timeout=90)

    conversation = json.dumps(fake.requests[-1]["body"])
    assert "force pushes, remote deletes and mirrors rewrite shared history" in conversation
    assert "an agent writes only inside its own worktree" in conversation
    assert not outside.exists()
    assert "does not appear to be a git repository" in conversation  # the approved push ran
    assert states(lab)[:4] == ["working", "waiting", "working", "idle"]

    store = open_store(store_url(lab))
    try:
        run = store.latest_run("toy")
        assert run is not None
        (trial,) = store.trials(run.id, agent="claude")
    finally:
        store.close()
    assert trial.status is TrialStatus.rejected and "judge.py" in (trial.reason or "")

    records = audit_export(lab)
    decisions = [r for r in records if r["kind"] == "decision"]
    denied = {
        h["id"]
        for r in decisions
        if r["payload"]["decision"] == "deny"
        for h in r["payload"]["rules"]
    }
    assert {"no-force-push", "no-writes-outside-worktree"} <= denied
    assert all(r["payload"]["policy_version"] for r in decisions)
    kinds = [r["kind"] for r in records]
    assert "approval.requested" in kinds and "approval.approved" in kinds
    rejected = [r for r in records if r["kind"] == "trial.rejected"]
    assert rejected and rejected[0]["correlation"] == f"{run.id}:{trial.number}"
    verified = run_cli("audit", "verify", str(lab))
    assert verified.returncode == 0, verified.stdout + verified.stderr


def wait_for_approval(lab: Path) -> Approval:
    found: list[Approval] = []

    def pending() -> bool:
        store = open_store(store_url(lab))
        try:
            found[:] = store.approvals("toy", statuses=["pending"])
        finally:
            store.close()
        return bool(found)

    wait_until(pending, timeout=90)
    return found[0]


def test_a_ready_agent_keeps_only_what_a_human_approves(tmp_path: Path) -> None:
    """Autonomy `ready`: each measured improvement waits in the inbox; the agent shows as
    waiting; approved is kept, denied is discarded with the reason."""
    replies = [
        Reply(text=render("X to 3", [Edit("exp.py", "X = 0.5\n", "X = 3\n")])),
        Reply(text=render("Y to 1", [Edit("exp.py", "Y = 5\n", "Y = 1\n")])),
    ]
    with FakeProvider("openai") as fake:
        fake.enqueue(*replies)
        lab = make_lab(
            tmp_path / "lab",
            knobs=(),
            agents=[llm_agent(autonomy="ready")],
            gateway=fake_openai(fake.url),
        )
        with started(
            [*OVERNIGHT, "run", str(lab), "--trials", "2"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        ) as proc:
            first = wait_for_approval(lab)
            wait_until(lambda: run_states(lab)[-1] == "waiting", timeout=30)
            approved = run_cli("approve", first.id, "-C", str(lab), "--note", "looks right")
            assert approved.returncode == 0, approved.stderr
            second = wait_for_approval(lab)
            assert second.id != first.id
            denied = run_cli("deny", second.id, "-C", str(lab), "--note", "not Y")
            assert denied.returncode == 0, denied.stderr
            out, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, out + err

    store = open_store(store_url(lab))
    try:
        run = store.latest_run("toy")
        assert run is not None
        kept, discarded = store.trials(run.id, agent="coder")
    finally:
        store.close()
    assert kept.status is TrialStatus.kept and kept.description == "X to 3"
    assert first.correlation == f"{run.id}:{kept.number}"
    assert discarded.status is TrialStatus.discarded
    assert f"policy: approval {second.id} denied: not Y" in (discarded.reason or "")
    inbox = run_cli("approvals", str(lab)).stdout
    assert first.id in inbox or "no pending" in inbox.lower()


def run_states(lab: Path) -> list[str]:
    store = open_store(store_url(lab))
    try:
        run = store.latest_run("toy")
        events = [] if run is None else store.events(run.id, limit=100000)
    finally:
        store.close()
    return [str(e.payload["state"]) for e in events if e.kind == "agent.state"] or [""]


class OtlpReceiver:
    """A loopback OTLP/HTTP collector: keeps every span `overnight run` exports."""

    def __init__(self) -> None:
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
            ExportTraceServiceRequest,
        )

        spans = self.spans = []  # type: list[Any]

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["content-length"]))
                request = ExportTraceServiceRequest.FromString(body)
                for resource in request.resource_spans:
                    for scope in resource.scope_spans:
                        spans.extend(scope.spans)
                self.send_response(200)
                self.send_header("content-type", "application/x-protobuf")
                self.send_header("content-length", "0")
                self.end_headers()

            def log_message(self, *_: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def attributes(self, span: Any) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for kv in span.attributes:
            value = kv.value
            out[kv.key] = getattr(value, value.WhichOneof("value"))
        return out

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def test_a_trial_is_one_trace_from_proposal_to_llm_attempt_with_its_decisions(
    tmp_path: Path,
) -> None:
    """With OTLP configured, a trial's span holds its proposal, whose child is the gateway's
    request span (the llm runtime sends its traceparent), whose child is the attempt; the
    policy decisions on the trial are spans of the same trace; the correlation id ties the
    trial span, its audit records and its ledger row."""
    receiver = OtlpReceiver()
    try:
        with FakeProvider("openai") as fake:
            fake.enqueue(Reply(text=render("X to 3", [Edit("exp.py", "X = 0.5\n", "X = 3\n")])))
            lab = make_lab(
                tmp_path / "lab", knobs=(), agents=[llm_agent()], gateway=fake_openai(fake.url)
            )
            done = run_cli(
                "run",
                str(lab),
                "--trials",
                "1",
                env={"OTEL_EXPORTER_OTLP_ENDPOINT": receiver.url, "OTEL_SERVICE_NAME": "lab"},
            )
            assert done.returncode == 0, done.stderr
    finally:
        receiver.close()
    spans = receiver.spans
    by_id = {s.span_id: s for s in spans}
    (trial,) = [
        s
        for s in spans
        if s.name == "overnight.trial" and receiver.attributes(s)["overnight.agent"] == "coder"
    ]
    correlation = receiver.attributes(trial)["overnight.correlation"]
    (proposal,) = [
        s for s in spans if s.name == "overnight.proposal" and s.parent_span_id == trial.span_id
    ]
    (request,) = [s for s in spans if s.parent_span_id == proposal.span_id]
    assert receiver.attributes(request)["gen_ai.request.model"] == "smart"
    attempts = [s for s in spans if s.parent_span_id == request.span_id]
    assert attempts and all(s.trace_id == trial.trace_id for s in attempts)
    assert receiver.attributes(attempts[0])["gen_ai.provider.name"]
    decisions = [
        receiver.attributes(s)
        for s in spans
        if s.name == "overnight.decision" and s.trace_id == trial.trace_id
    ]
    assert {d["overnight.action.kind"] for d in decisions} >= {"edit", "keep"}
    assert all(
        d["overnight.decision"] == "allow" and "overnight.risk.score" in d for d in decisions
    )
    assert all(by_id.get(s.parent_span_id) is not None for s in attempts)
    records = audit_export(lab)
    assert any(r["correlation"] == correlation and r["kind"] == "decision" for r in records)
    assert any(r["correlation"] == correlation and r["kind"] == "trial.kept" for r in records)
    number = int(correlation.split(":")[1])
    ledger = run_cli("ledger", str(lab), "--tsv").stdout
    assert f"\t{number}\tcoder\t" in ledger
