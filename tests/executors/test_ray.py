"""Trials on a real Ray cluster (`[executor] kind = "ray"`): a head and two worker nodes
on this machine, in a network namespace of its own (the `cluster` fixture, see
tests/helpers/ray_cluster.py).
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import tempfile
import time
import uuid
from pathlib import Path

import pytest

from overnight.lab.runner import find_marked
from overnight.markers import TRIAL_MARKER
from overnight.sessions import wait_until
from tests.helpers.labs import PYTHON, make_lab
from tests.helpers.processes import process_gone, run_cli
from tests.helpers.ray_cluster import ROOT, Cluster
from tests.helpers.store import latest_agents, latest_events, latest_trials

pytestmark = pytest.mark.skipif(
    shutil.which("unshare") is None or shutil.which("nsenter") is None or os.geteuid() != 0,
    reason="needs unshare/nsenter as root for the cluster's own network namespace",
)

SLOW_SCRIPT = """\
import os, time
X = 0.5
Y = 5
print("training on", os.environ.get("CUDA_VISIBLE_DEVICES"), flush=True)
# (past the bytes the lab holds back of a log while they could begin a secret)
print("." * 1000, flush=True)
time.sleep(1.5)
# a test makes a run touch the protected evaluator while this file exists
if os.path.exists(os.path.join(os.environ.get("HOLD_DIR", "/nonexistent"), "tamper")):
    with open("judge.py", "a") as fh:
        fh.write("# changed by the run\\n")
# a test holds a trial running as long as this file exists (the lab's .git is visible),
# or one trial: as long as hold-NUMBER does
held = [os.path.join(os.environ.get("HOLD_DIR", "/nonexistent"), name)
        for name in ("hold", f"hold-{os.environ.get('OVERNIGHT_TRIAL')}")]
while any(os.path.exists(path) for path in held):
    time.sleep(0.1)
print(f"score: {(X - 3) ** 2 + (Y - 1) ** 2}")
"""


def ray_lab(
    root: Path,
    address: str,
    *,
    agents: int = 2,
    lab: dict[str, object] | None = None,
    script: str = SLOW_SCRIPT,
) -> Path:
    """The toy lab (SLOW_SCRIPT), its trials on the cluster at `address`, each reserving
    a GPU and an `a100`."""
    return make_lab(
        root, script=script, agents=[{"name": "t", "count": agents}],
        lab={"parallel": 2, "gpus_per_trial": 1, "env": [f"HOLD_DIR={root / '.git'}"],
             **(lab or {})},
        extra=f'[executor]\nkind = "ray"\naddress = "{address}"\nresources = {{ a100 = 1 }}\n',
    )  # fmt: skip


def events(lab: Path, kind: str) -> list[dict[str, object]]:
    """The payloads of the latest run's events of `kind`, each with its trial's number."""
    return [{**e.payload, "trial": e.trial} for e in latest_events(lab, kind)]


def test_trials_run_on_both_workers_with_their_gpu_and_stream_their_logs(
    cluster: Cluster, tmp_path: Path
) -> None:
    lab = ray_lab(tmp_path / "lab", cluster.address)
    done = cluster.overnight("run", str(lab), "--trials", "6")
    assert done.returncode == 0, done.stdout + done.stderr

    placed = events(lab, "trial.placed")
    assert len({p["node"] for p in placed}) == 2, placed  # both workers, never the head
    assert {p["cuda_visible_devices"] for p in placed} == {"0"}
    trials = latest_trials(lab)
    measured = [t for t in trials if t.metric is not None]
    assert len(measured) >= 6, [(t.number, t.status, t.reason) for t in trials]
    for trial in measured:
        log = Path(trial.log_path or "").read_text()
        assert "training on 0" in log and "score: " in log, log
        assert trial.peak_rss_mb is not None and trial.peak_rss_mb > 1


def run_without(module: str, lab: Path, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    """`overnight run` of `lab` where `module` cannot be imported; it fails as bad input."""
    hide = tmp_path / f"no-{module}"
    hide.mkdir()
    (hide / "sitecustomize.py").write_text(f"import sys\nsys.modules[{module!r}] = None\n")
    done = run_cli("run", str(lab), "--trials", "1", env={"PYTHONPATH": f"{hide}:{ROOT}"})
    assert done.returncode == 2, done.stdout + done.stderr
    return done


def test_without_ray_installed_the_lab_says_what_to_install(tmp_path: Path) -> None:
    lab = ray_lab(tmp_path / "lab", "127.0.0.1:6379")
    done = run_without("ray", lab, tmp_path)
    assert "but Ray is not installed here" in done.stderr, done.stderr
    assert "fix: pip install 'overnight[ray]'" in done.stderr, done.stderr
    assert not (lab / ".overnight" / "overnight.db").exists()


def test_an_unreachable_cluster_is_one_clear_error_naming_the_address(tmp_path: Path) -> None:
    pytest.importorskip("ray")
    lab = ray_lab(tmp_path / "lab", "127.0.0.1:1")
    done = run_cli("run", str(lab), "--trials", "1")
    assert done.returncode != 0
    assert "no Ray cluster answers at 127.0.0.1:1" in done.stderr, done.stderr
    assert "fix: start the cluster first" in done.stderr, done.stderr
    assert "Traceback" not in done.stderr
    assert not (lab / ".overnight" / "overnight.db").exists()  # refused before any run began


def test_an_unreachable_ray_client_address_is_one_clear_error_naming_the_port(
    tmp_path: Path,
) -> None:
    pytest.importorskip("ray")
    lab = ray_lab(tmp_path / "lab", "ray://127.0.0.1:1")
    done = run_cli("run", str(lab), "--trials", "1")
    assert done.returncode == 2, done.stdout + done.stderr
    assert "executor.address: no Ray cluster answers at ray://127.0.0.1:1" in done.stderr
    assert "--ray-client-server-port=10001" in done.stderr, done.stderr
    # (and how to start a head whose Ray Client server starts every lab's driver)
    assert "GRPC_ENABLE_FORK_SUPPORT=false ray start --head" in done.stderr, done.stderr
    assert "open that port on the head to this machine" in done.stderr, done.stderr
    assert "Traceback" not in done.stderr
    assert not (lab / ".overnight" / "overnight.db").exists()
    # `auto` takes a Ray Client address from RAY_ADDRESS, as Ray does
    lab = ray_lab(tmp_path / "auto", "auto")
    done = run_cli("run", str(lab), "--trials", "1", env={"RAY_ADDRESS": "ray://127.0.0.1:1"})
    assert done.returncode == 2, done.stdout + done.stderr
    assert "no Ray cluster answers at ray://127.0.0.1:1" in done.stderr, done.stderr


def test_without_ray_client_installed_a_ray_client_address_says_what_to_install(
    tmp_path: Path,
) -> None:
    pytest.importorskip("ray")
    lab = ray_lab(tmp_path / "lab", "ray://127.0.0.1:10001")
    done = run_without("grpc", lab, tmp_path)
    assert "but Ray Client (grpcio, `ray[client]`) is not installed here" in done.stderr
    assert "fix: pip install 'overnight[ray]' (it brings ray[client])" in done.stderr
    assert not (lab / ".overnight" / "overnight.db").exists()


def test_a_lab_outside_the_cluster_runs_on_it_through_ray_client(
    cluster: Cluster, tmp_path: Path
) -> None:
    # ray://: the head's Ray Client server, the one port a lab on another machine reaches
    lab = ray_lab(
        tmp_path / "lab", cluster.client_address, agents=1, lab={"budget": "8s", "grace": "1s"}
    )
    number = 3  # the last trial runs past its budget
    hold = lab / ".git" / f"hold-{number}"
    hold.touch()
    proc = cluster.start("run", str(lab), "--trials", "2", "--no-ui")
    try:
        # its log streams back while it runs
        wait_until(lambda: proc.poll() is not None or "training on 0" in log_of(lab, number), 180)
        assert proc.poll() is None, finish(proc)
        assert status_of(lab, number) == "running"
        out = finish(proc)
    finally:
        hold.unlink(missing_ok=True)
        end(proc)
    assert proc.returncode == 0, out
    trials = {t.number: t for t in latest_trials(lab)}
    held = trials[number]
    assert held.status.value == "timed_out", held
    assert "killed after 9s" in (held.reason or ""), held.reason
    left = [  # its whole process group was killed, on its node
        pid
        for pid, env in find_marked(TRIAL_MARKER, str(number))
        if env.get("HOLD_DIR") == str(lab / ".git") and not process_gone(pid)
    ]
    assert not left, left
    assert any(t.status.value == "kept" for t in trials.values()), trials
    for trial in trials.values():
        if trial.number != number:
            log = Path(trial.log_path or "").read_text()
            assert "training on 0" in log and "score: " in log, log
            assert trial.peak_rss_mb is not None and trial.peak_rss_mb > 1, trial
    placed = events(lab, "trial.placed")
    assert {p["trial"] for p in placed} == set(trials), placed  # each on a worker node
    assert {p["cuda_visible_devices"] for p in placed} == {"0"}, placed
    assert not events(lab, "executor.unreachable")


def log_of(lab: Path, number: int) -> str:
    """What a trial's log holds so far."""
    trial = next((t for t in latest_trials(lab) if t.number == number), None)
    if trial is None or not trial.log_path or not Path(trial.log_path).exists():
        return ""
    return Path(trial.log_path).read_text(errors="replace")


def raylet_of(node: str) -> int:
    """The pid of the raylet of cluster node `node` (it is that node, to Ray)."""
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                args = (entry / "cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            if f"--node_id={node}".encode() in args:
                return int(entry.name)
    raise AssertionError(f"no raylet for node {node}")


def end(proc: subprocess.Popen[str]) -> None:
    """A run still going killed, with its process group (a test's finally)."""
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()


def finish(proc: subprocess.Popen[str], timeout: float = 300) -> str:
    """What `proc` printed once it ended (killed, with its group, if it is still running
    after `timeout`)."""
    try:
        out, _ = proc.communicate(timeout=timeout)
    finally:
        end(proc)
    return out


def test_a_worker_node_lost_mid_trial_interrupts_it_and_runs_it_again_once(
    cluster: Cluster, tmp_path: Path
) -> None:
    lab = ray_lab(tmp_path / "lab", cluster.address, agents=1)
    hold = lab / ".git" / "hold-2"
    hold.touch()  # the first trial after the baseline runs until the node under it is gone
    proc = cluster.start("run", str(lab), "--trials", "2", "--no-ui")
    try:
        wait_until(lambda: any(p["trial"] != 1 for p in events(lab, "trial.placed")), 120)
        placed = next(p for p in events(lab, "trial.placed") if p["trial"] != 1)
        os.kill(raylet_of(str(placed["node"])), signal.SIGKILL)
        wait_until(lambda: bool(events(lab, "executor.node_lost")), 180)
        hold.unlink()
        out = finish(proc)
    finally:
        hold.unlink(missing_ok=True)
        end(proc)
        cluster.add_worker()  # the next test has two workers again
    assert proc.returncode == 0, out
    lost = events(lab, "executor.node_lost")
    assert [e["node"] for e in lost] == [placed["node"]], lost
    trials = {t.number: t for t in latest_trials(lab)}
    victim = trials[int(str(placed["trial"]))]
    assert victim.status.value == "interrupted", victim
    assert "its cluster node was lost" in (victim.reason or ""), victim.reason
    again = [t for t in trials.values() if t.requeued_from == victim.number]
    assert len(again) == 1 and again[0].metric is not None, trials
    assert again[0].description == victim.description
    where = [p["node"] for p in events(lab, "trial.placed") if p["trial"] == again[0].number]
    assert where and placed["node"] not in where


def test_a_run_killed_mid_trial_resumes_killing_what_it_left_on_the_cluster(
    cluster: Cluster, tmp_path: Path
) -> None:
    # no sandbox: bubblewrap would take the experiment down with its Ray worker; without
    # one, the experiment outlives both (its watchdog would end it at budget + grace)
    lab = ray_lab(tmp_path / "lab", cluster.address, agents=1, lab={"sandbox": "none"})
    hold = lab / ".git" / "hold-2"
    hold.touch()  # the first trial after the baseline runs until the test lets go
    proc = cluster.start("run", str(lab), "--trials", "3", "--no-ui")
    try:
        wait_until(lambda: any(p["trial"] != 1 for p in events(lab, "trial.placed")), 120)
        placed = next(p for p in events(lab, "trial.placed") if p["trial"] != 1)
        number = str(placed["trial"])
        wait_until(lambda: bool(experiment_of(number)), 30)
        left = experiment_of(number)
        os.kill(proc.pid, signal.SIGKILL)  # nsenter execs overnight: this is the run
        finish(proc)
        # What the dead run left on the node outlives it (its processes have a group of
        # their own); the resume reaps it before anything runs again: the held experiment
        # is gone while the hold is still there
        proc = cluster.start("run", str(lab), "--trials", "1", "--no-ui")
        wait_until(lambda: all(process_gone(pid) for pid in left), 180)
        hold.unlink()
        printed = finish(proc)
        resumed = subprocess.CompletedProcess(proc.args, proc.returncode, printed, "")
    finally:
        hold.unlink(missing_ok=True)
        end(proc)
        for pid in experiment_of(str(placed["trial"])) if "placed" in locals() else []:
            os.kill(pid, signal.SIGKILL)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    trials = {t.number: t for t in latest_trials(lab)}
    victim = trials[int(number)]
    assert victim.status.value == "interrupted", victim
    again = [t for t in trials.values() if t.requeued_from == victim.number]
    assert len(again) == 1 and again[0].metric is not None, trials


def experiment_of(trial: str) -> list[int]:
    """The pids of a trial's experiment (its processes carry the trial's marker)."""
    return [
        pid
        for pid, env in find_marked(TRIAL_MARKER, trial)
        if env.get("HOLD_DIR") and not process_gone(pid)
    ]


def test_an_agents_overnight_try_after_the_run_runs_its_experiment_on_a_worker(
    cluster: Cluster, tmp_path: Path
) -> None:
    # no sandbox: an interrupted `try` must end its experiment on the node itself
    lab = ray_lab(
        tmp_path / "lab", cluster.address, agents=1, lab={"min_delta": 0, "sandbox": "none"},
        script=SLOW_SCRIPT.replace("time.sleep(1.5)\n", ""),  # (held where it must be)
    )  # fmt: skip
    done = cluster.overnight("run", str(lab), "--trials", "1", "--no-ui")
    assert done.returncode == 0, done.stdout + done.stderr
    (agent,) = latest_agents(lab)
    worktree = Path(agent.worktree)
    exp = worktree / "exp.py"
    # (wherever the run's trial left the knobs: it may have been kept)
    optimum = re.sub(r"(?m)^Y = .*$", "Y = 1", re.sub(r"(?m)^X = .*$", "X = 3", exp.read_text()))
    exp.write_text(optimum)
    numbered = len(latest_trials(lab))

    # no command center, so this process joins the cluster: one that does not answer is
    # said before a trial is numbered, and the agent's change stays
    config = (lab / "overnight.toml").read_text()
    (lab / "overnight.toml").write_text(config.replace(cluster.address, "127.0.0.1:1"))
    refused = cluster.overnight("try", "at the optimum", "--dir", str(worktree))
    (lab / "overnight.toml").write_text(config)
    assert refused.returncode == 2, refused.stdout + refused.stderr
    assert "no Ray cluster answers at 127.0.0.1:1" in refused.stderr, refused.stderr
    assert len(latest_trials(lab)) == numbered and "X = 3" in exp.read_text()

    kept = cluster.overnight("try", "at the optimum", "--dir", str(worktree))
    assert kept.returncode == 0, kept.stdout + kept.stderr
    assert "KEPT: score 0 " in kept.stdout, kept.stdout
    trial = latest_trials(lab)[-1]
    [placed] = [p for p in events(lab, "trial.placed") if p["trial"] == trial.number]
    workers = set().union(*cluster.nodes[1:])  # (the head's processes come first)
    assert raylet_of(str(placed["node"])) in workers, placed
    assert placed["cuda_visible_devices"] == "0", placed
    assert "training on 0" in Path(trial.log_path or "").read_text()

    # Ctrl-C or SIGTERM stops the trial, on its node too
    exp.write_text(exp.read_text().replace("X = 3", "X = 4"))
    number = trial.number + 1
    hold = lab / ".git" / f"hold-{number}"
    hold.touch()
    proc = cluster.start("try", "held", "--dir", str(worktree))
    try:
        wait_until(lambda: bool(experiment_of(str(number))), 60)
        left = experiment_of(str(number))
        os.kill(proc.pid, signal.SIGTERM)  # nsenter execs overnight: this is the `try`
        out = finish(proc, timeout=60)
        wait_until(lambda: all(process_gone(pid) for pid in left), 10)
    finally:
        hold.unlink()
        end(proc)
    assert proc.returncode == 130, out
    assert "interrupted; the trial is recorded as interrupted" in out, out
    [held] = [t for t in latest_trials(lab) if t.number == number]
    assert (held.status.value, held.reason) == ("interrupted", "stopped while running"), held


def test_a_trial_no_node_could_hold_is_refused_at_the_start(
    cluster: Cluster, tmp_path: Path
) -> None:
    lab = ray_lab(tmp_path / "lab", cluster.address)
    config = (lab / "overnight.toml").read_text().replace("{ a100 = 1 }", "{ h100 = 1 }")
    (lab / "overnight.toml").write_text(config)
    subprocess.run(["git", "-C", str(lab), "commit", "-qam", "h100"], check=True)
    done = cluster.overnight("run", str(lab), "--trials", "1", "--no-ui")
    assert done.returncode == 2, done.stdout + done.stderr
    assert f"no node of the Ray cluster at {cluster.address} has what one trial reserves" in (
        done.stderr
    ), done.stderr
    assert "h100 = 1" in done.stderr and "fix: start nodes that declare it" in done.stderr
    assert not (lab / ".overnight" / "overnight.db").exists()


def test_a_run_that_changes_a_protected_file_on_its_node_is_rejected(
    cluster: Cluster, tmp_path: Path
) -> None:
    lab = ray_lab(tmp_path / "lab", cluster.address, agents=1)
    proc = cluster.start("run", str(lab), "--trials", "1", "--no-ui")
    try:
        wait_until(
            lambda: (
                proc.poll() is not None or any(t.status.value == "kept" for t in latest_trials(lab))
            ),
            180,
        )
        (lab / ".git" / "tamper").touch()  # every trial after the baseline
        out = finish(proc)
    finally:
        end(proc)
    assert proc.returncode == 0, out
    rejected = [t for t in latest_trials(lab) if t.agent != "baseline"]
    assert rejected and all(t.status.value == "rejected" for t in rejected), rejected
    assert all(
        t.reason == "integrity: the run protected file(s) modified: judge.py" for t in rejected
    ), [t.reason for t in rejected]
    assert (lab / "judge.py").read_text() == "# the protected evaluator\n"  # only its copy


PEEK_SCRIPT = """\
import os
X = 0.5
Y = 5
# what an agent's change could try: read the hidden holdout from where it runs
print("hidden here:", os.path.exists("holdout_eval.py") or os.path.exists("holdout"))
print(f"score: {(X - 3) ** 2 + (Y - 1) ** 2}")
"""
HOLDOUT_EVAL = """\
import os
print("holdout ran in", os.getcwd(), "on GPU", os.environ.get("CUDA_VISIBLE_DEVICES"))
print("holdout_score:", len(open("holdout/data.txt").read().split()))
"""


def test_the_holdout_runs_on_a_node_with_the_hidden_files_for_that_run_only(
    cluster: Cluster, tmp_path: Path
) -> None:
    token = f"secret-{uuid.uuid4().hex}"
    lab = make_lab(
        tmp_path / "lab", script=PEEK_SCRIPT, agents=[{"name": "t", "count": 1}],
        lab={"parallel": 1, "gpus_per_trial": 1, "holdout": f"{PYTHON} holdout_eval.py",
             "holdout_metric": "holdout_score", "hidden": ["holdout_eval.py", "holdout/**"]},
        extra=f'[executor]\nkind = "ray"\naddress = "{cluster.address}"\n'
        "resources = { a100 = 1 }\n",
    )  # fmt: skip
    (lab / "holdout_eval.py").write_text(HOLDOUT_EVAL)
    (lab / "holdout").mkdir()
    (lab / "holdout" / "data.txt").write_text(f"{token} two three\n")

    done = cluster.overnight("run", str(lab), "--trials", "3", "--no-ui")
    assert done.returncode == 0, done.stdout + done.stderr

    trials = latest_trials(lab)
    baseline = next(t for t in trials if t.agent == "baseline")
    assert baseline.holdout_metric == 3, baseline  # measured, with the hidden data
    placed = events(lab, "holdout.placed")
    # on a worker node (only they have a GPU), with the GPU Ray gave the task
    assert placed and {p["cuda_visible_devices"] for p in placed} == {"0"}, placed
    assert {p["trial"] for p in placed} >= {baseline.number}
    log = lab / ".overnight" / "logs"
    holdout_logs = [p.read_text() for p in log.rglob("*") if p.is_file() and "holdout" in p.name]
    assert holdout_logs and all("holdout ran in" in text for text in holdout_logs), holdout_logs
    assert all(str(lab) not in text for text in holdout_logs)  # not in the lab's checkout
    # no trial's own run saw the hidden files, on whatever node it ran
    for trial in trials:
        assert "hidden here: False" in Path(trial.log_path or "").read_text(), trial
    # and the node kept nothing of them once the holdout was done
    leftovers = Path(tempfile.gettempdir()).glob("overnight-trial-*/checkout/holdout/data.txt")
    assert not [p for p in leftovers if token in p.read_text(errors="replace")]


def test_the_shipped_example_runs_across_the_cluster_with_two_lines_changed(
    cluster: Cluster, tmp_path: Path
) -> None:
    lab = tmp_path / "spirals"
    made = run_cli("example", "spirals", str(lab))
    assert made.returncode == 0, made.stdout + made.stderr
    with (lab / "overnight.toml").open("a") as fh:
        fh.write(f'\n[executor]\nkind = "ray"\naddress = "{cluster.address}"\n')
    subprocess.run(["git", "-C", str(lab), "commit", "-qam", "on the cluster"], check=True)

    done = cluster.overnight("run", str(lab), "--trials", "3", "--no-ui", timeout=900)
    assert done.returncode == 0, done.stdout + done.stderr

    trials = latest_trials(lab, "spirals")
    measured = [t for t in trials if t.metric is not None]
    assert len(measured) >= 4, [(t.number, t.status, t.reason) for t in trials]  # + baseline
    placed = [
        {**e.payload, "trial": e.trial} for e in latest_events(lab, "trial.placed", "spirals")
    ]
    assert {p["trial"] for p in placed} >= {t.number for t in measured}
    # its two agents' trials run at once, and a node holds one (each declares 1 CPU)
    assert len({p["node"] for p in placed}) >= 2, placed
    for trial in measured:
        log = Path(trial.log_path or "").read_text()
        assert "train_loss: " in log, log  # trained, then scored, on the node
        assert "[overnight: evaluate: python evaluate.py]\nval_loss: " in log, log


def test_a_cluster_stopped_under_a_running_lab_pauses_it_until_the_cluster_is_back(
    cluster: Cluster, tmp_path: Path
) -> None:
    lab = ray_lab(tmp_path / "lab", cluster.address, agents=1)
    number = 2  # the trial after the baseline runs until the cluster is gone
    hold = lab / ".git" / f"hold-{number}"
    hold.touch()
    # Ray ends a process whose head is gone this long (60 s unless told): not the lab's run
    ray_gives_up = 5
    proc = cluster.start(
        "run", str(lab), "--trials", "2", "--no-ui",
        env={"RAY_gcs_rpc_server_reconnect_timeout_s": str(ray_gives_up)},
    )  # fmt: skip
    try:
        wait_until(lambda: any(p["trial"] == number for p in events(lab, "trial.placed")), 180)
        cluster.stop_nodes()
        wait_until(lambda: bool(events(lab, "executor.unreachable")), 60)
        wait_until(lambda: status_of(lab, number) == "interrupted", 60)
        wait_until(lambda: paused(lab) is not None, 60)
        hold.unlink()
        # the run waits out an outage longer than Ray would have let it
        gone = time.monotonic()
        wait_until(
            lambda: proc.poll() is not None or time.monotonic() - gone > 3 * ray_gives_up, 30
        )
        assert proc.poll() is None, proc.communicate()[0]
        cluster.start_head()
        for _ in range(2):
            cluster.add_worker()
        out = finish(proc)
    finally:
        hold.unlink(missing_ok=True)
        end(proc)
        if not cluster.nodes:  # the next test has a cluster again
            cluster.start_head()
            for _ in range(2):
                cluster.add_worker()
    assert proc.returncode == 0, out
    [down] = events(lab, "executor.unreachable")
    assert down["address"] == cluster.address, down
    [back] = events(lab, "executor.reachable")
    assert float(str(back["lasted_s"])) > 3 * ray_gives_up, back
    assert f"the Ray cluster at {cluster.address} is unreachable" in str(paused(lab)), paused(lab)
    assert any(e.get("state") == "working" and e.get("reason") == "the cluster is back"
               for e in events(lab, "agent.state"))  # fmt: skip
    trials = {t.number: t for t in latest_trials(lab)}
    victim = trials[number]
    assert "its Ray cluster went unreachable" in (victim.reason or ""), victim.reason
    again = [t for t in trials.values() if t.requeued_from == victim.number]
    assert len(again) == 1 and again[0].metric is not None, trials
    placed_again = [p for p in events(lab, "trial.placed") if p["trial"] == again[0].number]
    assert placed_again, "the trial run again ran on the cluster that came back"


def status_of(lab: Path, number: int) -> str | None:
    return next((t.status.value for t in latest_trials(lab) if t.number == number), None)


def paused(lab: Path) -> str | None:
    """Why the lab's agent was paused, if it was."""
    return next(
        (str(e.get("reason")) for e in events(lab, "agent.state") if e.get("state") == "paused"),
        None,
    )
