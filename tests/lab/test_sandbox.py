"""Trust boundaries: what an experiment or an agent's CLI can reach, and budgets that hold
when overnight dies.

Hostile experiments and a hostile Claude Code agent try every route to a secret (their
environment, the lab's `.overnight/` files, `/proc/<pid>/environ` of overnight itself, the
audit key) through the real `overnight run`; the tests then look for the secrets wherever
overnight writes (trial logs, the database file, events, the prompts sent upstream).
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from overnight.lab.runner import find_marked
from overnight.lab.sandbox import bwrap_problem
from overnight.sessions import wait_until
from overnight.testing import FakeProvider, Reply
from tests.helpers.labs import (
    TOY_KNOBS,
    claude_agent,
    fake_anthropic,
    fake_openai,
    llm_agent,
    make_lab,
)
from tests.helpers.processes import OVERNIGHT, run_cli, start, stop
from tests.helpers.store import latest_trials

pytestmark = pytest.mark.skipif(bwrap_problem() is not None, reason=f"{bwrap_problem()}")

HOSTILE = """\
import glob, os, pathlib, socket, sys
X = 0.5
Y = 5
here = pathlib.Path.cwd()
state = here.parents[2]  # <lab>/.overnight, from <lab>/.overnight/worktrees/<run>/<agent>


def show(label, fn):
    try:
        print(label, repr(fn())[:4000])
    except Exception as exc:
        print(label, "ERR", type(exc).__name__)


show("env:", lambda: sorted(os.environ))
show("keys:", lambda: {{p: open(p).read() for p in glob.glob(str(state / "keys" / "*"))}})
show("db:", lambda: (state / "overnight.db").read_bytes()[:16])
show("audit-key:", lambda: open({audit_key!r}).read())
environs = {{}}
for path in glob.glob("/proc/[0-9]*/environ"):
    try:
        environs[path] = open(path, "rb").read().decode(errors="replace")
    except OSError:
        pass
print("pids:", len(environs))
print("environ:", repr(environs))
show("write-outside:", lambda: (here.parents[3] / "pwned.txt").write_text("x"))
show("write-inside:", lambda: (here / "scratch.txt").write_text("x"))
show("net:", lambda: socket.create_connection(("127.0.0.1", {port}), timeout=5).close())
show("cache:", lambda: (pathlib.Path({cache!r}) / "hit").write_text("x"))
if X != 0.5:
    sys.exit(1)  # a crash: its log's last lines go into the next prompt
print(f"score: {{(X - 3) ** 2 + (Y - 1) ** 2}}")
"""

CRASH = """\
DESCRIPTION: move X to 3
exp.py
<<<<<<< SEARCH
X = 0.5
=======
X = 3
>>>>>>> REPLACE
"""
SECOND = CRASH.replace("move X to 3", "move Y to 2").replace("X = 0.5", "Y = 5")
SECOND = SECOND.replace("X = 3", "Y = 2")


def _hostile_lab(tmp_path: Path, fake: FakeProvider, **fields: object) -> tuple[Path, Path]:
    """A lab (with `fields` in its [lab]) whose llm agent's changes run HOSTILE."""
    cache = tmp_path / "cache"
    cache.mkdir()
    script = HOSTILE.format(
        audit_key=os.environ["OVERNIGHT_AUDIT_KEY"], port=fake.port, cache=str(cache)
    )
    lab = make_lab(
        tmp_path / "lab",
        script=script,
        lab={"budget": "30s", **fields},
        knobs=(),
        agents=[llm_agent()],
        gateway=fake_openai(fake.url, key_env="FAKE_OPENAI_KEY"),
    )
    return lab, cache


def _everything_written(lab: Path, fake: FakeProvider) -> bytes:
    """Every byte overnight wrote about the run: the state directory's files (logs, the
    database and its WAL) but the agents' key files, the ledger, and what went upstream."""
    state = lab / ".overnight"
    blobs = [
        p.read_bytes()
        for p in state.rglob("*")
        if p.is_file() and "keys" not in p.relative_to(state).parts
    ]
    blobs.append(run_cli("ledger", str(lab), "--tsv").stdout.encode())
    blobs.append(json.dumps([r["body"] for r in fake.requests]).encode())
    return b"\n".join(blobs)


def _line(log: str, label: str) -> str:
    return next(line for line in log.splitlines() if line.startswith(label))


def test_a_sandboxed_experiment_reaches_no_secret(tmp_path: Path, fake: FakeProvider) -> None:
    secret = f"sk-upstream-{uuid.uuid4().hex}"
    fake.enqueue(Reply(text=CRASH), Reply(text=SECOND))
    # an upstream that echoes the key it was sent in an error: the attempt's record
    fake.fault("status", code=529, message=f"overloaded (key {secret})", times=1)
    lab, cache = _hostile_lab(tmp_path, fake, network=False, writable=[str(tmp_path / "cache")])
    done = run_cli("run", str(lab), "--trials", "2", env={"FAKE_OPENAI_KEY": secret})
    assert done.returncode == 0, done.stdout + done.stderr
    assert "no sandbox" not in done.stderr

    trials = latest_trials(lab)
    baseline = trials[0]
    assert baseline.agent == "baseline"
    assert [t.status.value for t in trials].count("crashed") == 1
    log = Path(baseline.log_path or "").read_text()
    # nothing of overnight's: not the credential's variable, not the database URL
    env_line = _line(log, "env:")
    assert "FAKE_OPENAI_KEY" not in env_line and "OVERNIGHT_DB" not in env_line
    assert _line(log, "keys:") == "keys: {}"  # .overnight/ is an empty folder in there
    assert _line(log, "db:") == "db: ERR FileNotFoundError"
    assert _line(log, "audit-key:") == "audit-key: ERR FileNotFoundError"
    # a PID namespace of its own: overnight's processes (and their environment) are not there
    assert int(_line(log, "pids:").split()[1]) < 10
    assert secret not in _line(log, "environ:")
    assert _line(log, "write-outside:") == "write-outside: ERR OSError"
    assert _line(log, "write-inside:").startswith("write-inside: 1")
    assert _line(log, "net:") == "net: ERR ConnectionRefusedError"  # network = false
    assert (cache / "hit").read_text() == "x"  # a declared cache is writable
    assert not (lab / "pwned.txt").exists()

    keys = [p.read_text().strip() for p in (lab / ".overnight" / "keys").iterdir()]
    written = _everything_written(lab, fake)
    for value in [secret, *keys]:
        assert value.encode() not in written
    # the crashed trial's last lines reached the model, which is the route a leak would take
    assert "write-inside" in json.dumps(fake.requests[-1]["body"])


def test_without_a_sandbox_a_leaked_secret_is_redacted_everywhere(
    tmp_path: Path, fake: FakeProvider
) -> None:
    secret = f"sk-upstream-{uuid.uuid4().hex}"
    fake.enqueue(Reply(text=CRASH), Reply(text=SECOND))
    lab, _cache = _hostile_lab(tmp_path, fake, sandbox="none")
    done = run_cli("run", str(lab), "--trials", "2", env={"FAKE_OPENAI_KEY": secret})
    assert done.returncode == 0, done.stdout + done.stderr

    baseline, crashed, _second = latest_trials(lab)
    log = Path(baseline.log_path or "").read_text()
    # its own environment is still the allowlist: the credential is not in it ...
    assert "FAKE_OPENAI_KEY" not in _line(log, "env:")
    # ... but without walls it reads the agents' keys and overnight's own environment,
    # and every one of those values is redacted before it is written anywhere
    assert "[redacted]" in _line(log, "keys:")
    assert "FAKE_OPENAI_KEY=[redacted]" in _line(log, "environ:")
    keys = [p.read_text().strip() for p in (lab / ".overnight" / "keys").iterdir()]
    written = _everything_written(lab, fake)
    for value in [secret, *keys]:
        assert value.encode() not in written
    assert "[redacted]" in (crashed.log_tail or "")
    assert "[redacted]" in json.dumps(fake.requests[-1]["body"])  # the prompt


SLOW = """\
import os, sys, time
X = 0.5
if os.environ.get("OVERNIGHT_AGENT") == "baseline":
    print("score: 1")
    sys.exit(0)
print("sleeping", flush=True)
time.sleep(60)
print("score: 0")
"""


@pytest.mark.parametrize("sandbox", ["bwrap", "none"])
def test_a_budget_holds_when_overnight_is_killed(tmp_path: Path, sandbox: str) -> None:
    lab = make_lab(
        tmp_path / "lab",
        script=SLOW,
        lab={"budget": "2s", "grace": "1s", "sandbox": sandbox},
        knobs=TOY_KNOBS[:1],
        agents=(),
    )
    proc = start(
        [*OVERNIGHT, "run", str(lab), "--no-ui"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    experiments: list[int] = []
    try:

        def running() -> bool:
            found = [
                pid
                for pid, env in find_marked("OVERNIGHT_AGENT", "tuner")
                if "OVERNIGHT_TRIAL" in env
            ]
            experiments[:] = found
            return bool(found)

        wait_until(running, timeout=60)
        started = time.monotonic()
        proc.kill()  # kill -9: nothing of overnight is left to enforce the budget
        proc.wait(timeout=10)
        # budget + grace is 3 s; the watchdog's KILL comes at most 4 s after that
        wait_until(lambda: not any(_alive(pid) for pid in experiments), timeout=15)
        elapsed = time.monotonic() - started
        # bwrap dies with overnight: before budget + grace (3 s) could have ended it
        limit = 2.5 if sandbox == "bwrap" else 3 + 4 + 1
        assert elapsed < limit, f"the experiment outlived overnight by {elapsed:.1f}s"
    finally:
        stop(proc, first=signal.SIGKILL)
        for pid in experiments:
            if _alive(pid):
                os.killpg(os.getpgid(pid), signal.SIGKILL)


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state not in ("Z", "X")


def test_a_sandbox_that_cannot_run_is_said_in_one_line_or_refused_when_asked_for(
    tmp_path: Path,
) -> None:
    no_bwrap = {"OVERNIGHT_BWRAP": str(tmp_path / "no-such-bwrap")}
    lab = make_lab(tmp_path / "lab")
    done = run_cli("run", str(lab), "--trials", "1", "--no-ui", env=no_bwrap)
    assert done.returncode == 0, done.stderr
    (warning,) = [line for line in done.stderr.splitlines() if "no sandbox" in line]
    assert "OVERNIGHT_BWRAP" in warning and 'sandbox = "none"' in warning

    strict = make_lab(tmp_path / "strict", lab={"sandbox": "bwrap"})
    refused = run_cli("run", str(strict), "--trials", "1", "--no-ui", env=no_bwrap)
    assert refused.returncode == 2
    assert "overnight.toml" in refused.stderr and "lab.sandbox" in refused.stderr
    assert "fix:" in refused.stderr and "Traceback" not in refused.stderr


def test_network_false_leaves_only_the_experiments_own_loopback(tmp_path: Path) -> None:
    server = socket.create_server(("127.0.0.1", 0))
    port = server.getsockname()[1]
    script = f"""\
import socket
X = 0.5
Y = 5
try:
    socket.create_connection(("127.0.0.1", {port}), timeout=5).close()
    print("reached: yes")
except OSError:
    print("reached: no")
print("score: 1")
"""
    try:
        for network, expected in (("true", "reached: yes"), ("false", "reached: no")):
            lab = make_lab(tmp_path / network, script=script, lab={"network": network == "true"})
            done = run_cli("run", str(lab), "--trials", "1", "--no-ui")
            assert done.returncode == 0, done.stderr
            (baseline, *_rest) = latest_trials(lab)
            assert expected in Path(baseline.log_path or "").read_text()
    finally:
        server.close()


PROBES = [
    "env | sort",
    "ls -a ../../..; cat ../../../keys/*; head -c 64 ../../../overnight.db",
    "ls /proc | grep -c '^[0-9]'; cat /proc/[0-9]*/environ | tr '\\0' '\\n' | grep -c FAKE_KEY",
    "sed -i 's/^X = .*/X = 3/; s/^Y = .*/Y = 1/' exp.py && overnight try 'X=3, Y=1'",
]


def test_a_sandboxed_claude_code_agent_reaches_no_secret(tmp_path: Path) -> None:
    from overnight.testing import ToolCall
    from tests.helpers.agents import running, states
    from tests.helpers.clis import claude_cli

    secret = f"sk-fake-{uuid.uuid4().hex}"
    script = [
        Reply(tool_calls=[ToolCall("Bash", {"command": c, "description": "probe"})]) for c in PROBES
    ] + [Reply(text="Done.")]
    with FakeProvider("anthropic", script=script, mode="conversation") as fake:
        lab = make_lab(
            tmp_path / "lab",
            knobs=TOY_KNOBS[:1],
            agents=[claude_agent(), {"name": "tuner", "runtime": "optuna"}],
            governance={"defaults": False},  # no policy in the way: the walls alone must hold
            gateway=fake_anthropic(fake.url),
        )
        home = tmp_path / "home"
        home.mkdir()
        env = {
            **os.environ,
            "HOME": str(home),
            "FAKE_KEY": secret,
            "OVERNIGHT_CLAUDE": str(claude_cli()),
        }
        with running(lab, env):
            wait_until(lambda: "idle" in states(lab), timeout=120)
        conversation = json.dumps(fake.requests[-1]["body"]["messages"])
        everything = json.dumps([r["body"] for r in fake.requests])

    results = [
        block["content"]
        for message in fake.requests[-1]["body"]["messages"]
        if isinstance(message.get("content"), list)
        for block in message["content"]
        if block.get("type") == "tool_result"
    ]
    env_out, state_out, proc_out, try_out = (json.dumps(r) for r in results)
    assert "ANTHROPIC_BASE_URL" in env_out and "OVERNIGHT_URL" in env_out
    assert "FAKE_KEY" not in env_out and "OVERNIGHT_DB" not in env_out
    # the lab's state is an empty folder but for this agent's own worktree and home
    assert ". .. agents worktrees" in state_out.replace("\\n", " ")
    assert "keys/*': No such file" in state_out
    assert "overnight.db' for reading: No such file" in state_out
    count, matches = (int(n) for n in json.loads(proc_out).split())
    assert count < 15 and matches == 0  # its own PID namespace: not overnight's environment
    assert "KEPT: score 0" in try_out  # `overnight try` from the sandbox: the desk ran it
    ledger = run_cli("ledger", str(lab), "--tsv").stdout
    assert "X=3, Y=1" in ledger and "keep" in ledger
    tuner_key = (lab / ".overnight" / "keys" / "tuner").read_text().strip()
    assert secret not in everything and tuner_key not in everything
    assert secret not in conversation


def test_a_lab_run_by_an_interpreter_under_tmp_still_finds_it(tmp_path: Path) -> None:
    """The sandbox's /tmp is a private one: a venv the lab's `run` names from under the
    machine's /tmp (as here, pytest's folders) is shown again inside it."""
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    _run_by(venv / "bin" / "python", tmp_path / "lab")


def test_a_lab_run_by_an_interpreter_called_through_a_link_still_finds_it(
    tmp_path: Path,
) -> None:
    """A venv the lab's `run` names through a symbolic link inside a folder the sandbox
    shows (here the lab's own, as a checkout whose `build` links to another checkout's):
    the sandbox shows it by the path the link leads to (bwrap cannot mount under a link)."""
    venv = tmp_path / "elsewhere" / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    lab = tmp_path / "lab"
    _run_by(lab / "tools" / "venv" / "bin" / "python", lab, link=(lab / "tools", venv.parent))


def _run_by(python: Path, root: Path, link: tuple[Path, Path] | None = None) -> None:
    """A one-knob lab at `root` whose `run` is `python exp.py` (`link`: a symbolic link made
    in it first), run for one trial: the baseline and the trial are measured (not
    `command not found`, 127)."""
    lab = make_lab(
        root,
        lab={"run": f"{python} exp.py", "budget": "2s", "grace": "1s"},
        knobs=TOY_KNOBS[:1],
        agents=(),
    )
    if link is not None:
        link[0].symlink_to(link[1], target_is_directory=True)
    (lab / "exp.py").write_text("X = 0.5\nprint('score: 1')\n")
    subprocess.run(["git", "commit", "-qam", "quick"], cwd=lab, check=True,
                   env={**os.environ, "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t",
                        "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@t"})  # fmt: skip
    done = run_cli("run", str(lab), "--trials", "1", "--no-ui")
    assert done.returncode == 0, done.stdout + done.stderr
    assert [t.status.value in ("kept", "discarded") for t in latest_trials(lab)] == [True, True]
