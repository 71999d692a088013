"""Trials on a real Ray cluster: a head and two worker nodes on this machine.

The cluster (and every `overnight run` that talks to it) lives in a network namespace
of its own, where the only interface is loopback, so none of its traffic leaves
127.0.0.1. Each worker declares one logical GPU and a custom resource `a100`; the
head declares neither, so trials land on the workers only.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from overnight.lab.runner import find_marked
from overnight.markers import TRIAL_MARKER
from overnight.records import Trial
from overnight.sessions import wait_until
from overnight.store import open_store, store_url
from tests.conftest import OVERNIGHT, make_lab, process_gone, run_cli

RAY = str(Path(sys.executable).with_name("ray"))
PORT = 6380
ROOT = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.skipif(
    shutil.which("unshare") is None or shutil.which("nsenter") is None or os.geteuid() != 0,
    reason="needs unshare/nsenter as root for the cluster's own network namespace",
)

SLOW_SCRIPT = """\
import os, time
X = 0.5
Y = 5
print("training on", os.environ.get("CUDA_VISIBLE_DEVICES"), flush=True)
time.sleep(1.5)
# a test makes a run touch the protected evaluator while this file exists
if os.path.exists(os.path.join(os.environ.get("HOLD_DIR", "/nonexistent"), "tamper")):
    with open("judge.py", "a") as fh:
        fh.write("# changed by the run\\n")
# a test holds a trial running as long as this file exists (the lab's .git is visible)
while os.path.exists(os.path.join(os.environ.get("HOLD_DIR", "/nonexistent"), "hold")):
    time.sleep(0.1)
print(f"score: {(X - 3) ** 2 + (Y - 1) ** 2}")
"""


@dataclass
class Cluster:
    ns: subprocess.Popen[bytes]
    temp: Path
    env: dict[str, str]

    def enter(self) -> list[str]:
        return ["nsenter", "-t", str(self.ns.pid), "-n"]

    def ray(self, *args: str, timeout: float = 180) -> str:
        """Run `ray ARGS` in the namespace; its output, asserting it succeeded. (To a file,
        not a pipe: the daemons `ray start` leaves behind would hold a pipe open.)"""
        out = self.temp.with_suffix(".out")
        with out.open("w") as fh:
            try:
                done = subprocess.run(
                    [*self.enter(), RAY, *args],
                    env=self.env, stdout=fh, stderr=subprocess.STDOUT, timeout=timeout,
                )  # fmt: skip
            except subprocess.TimeoutExpired:
                raise AssertionError(f"ray {args[0]} hung:\n{out.read_text()}") from None
        text = out.read_text()
        assert done.returncode == 0, text
        return text

    def overnight(self, *args: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [*self.enter(), *OVERNIGHT, *args],
            env=self.env, capture_output=True, text=True, timeout=timeout,
        )  # fmt: skip

    def add_worker(self) -> None:
        self.ray(
            "start", f"--address=127.0.0.1:{PORT}", "--node-ip-address=127.0.0.1",
            "--num-cpus=1", "--num-gpus=1", '--resources={"a100": 1}',
            "--object-store-memory=100000000",
        )  # fmt: skip

    def start(self, *args: str) -> subprocess.Popen[str]:
        """`overnight ARGS` in the namespace, in the background (stopped by the caller)."""
        return subprocess.Popen(
            [*self.enter(), *OVERNIGHT, *args], env=self.env, text=True,
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip

    def stop(self) -> None:
        subprocess.run(
            [*self.enter(), RAY, "stop", "--force"], env=self.env, capture_output=True, timeout=120
        )


@pytest.fixture(scope="module")
def cluster() -> Iterator[Cluster]:
    pytest.importorskip("ray")
    ns = subprocess.Popen(["unshare", "-n", "sleep", "infinity"])
    temp = Path(f"/tmp/ovr-{uuid.uuid4().hex[:6]}")
    env = {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "RAY_USAGE_STATS_ENABLED": "0",
        "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}",
    }
    found = Cluster(ns, temp, env)
    try:
        subprocess.run([*found.enter(), "ip", "link", "set", "lo", "up"], check=True)
        # On this busy machine the head's GCS now and then never comes up (its log stays
        # empty and `ray start` waits for it forever): give it a minute, then start over.
        for attempt in range(3):
            try:
                found.ray(
                    "start", "--head", "--node-ip-address=127.0.0.1", f"--port={PORT}",
                    "--num-cpus=1", "--include-dashboard=false", "--disable-usage-stats",
                    f"--temp-dir={temp}", "--object-store-memory=100000000", timeout=60,
                )  # fmt: skip
                break
            except AssertionError:
                found.stop()
                if attempt == 2:
                    raise
        for _ in range(2):
            found.add_worker()
        yield found
    finally:
        found.stop()
        ns.kill()
        ns.wait()
        shutil.rmtree(temp, ignore_errors=True)
        temp.with_suffix(".out").unlink(missing_ok=True)


def ray_lab(
    root: Path, *, agents: int = 2, address: str = f"127.0.0.1:{PORT}", extra: str = ""
) -> Path:
    lab = make_lab(
        root, script=SLOW_SCRIPT, parallel=2, agents=agents,
        lab_extra=f'env = ["HOLD_DIR={root / ".git"}"]\n{extra}',
    )  # fmt: skip
    with (lab / "overnight.toml").open("a") as fh:
        fh.write(f'\n[executor]\nkind = "ray"\naddress = "{address}"\nresources = {{"a100" = 1}}\n')
    config = (
        (lab / "overnight.toml")
        .read_text()
        .replace("parallel = 2\n", "parallel = 2\ngpus_per_trial = 1\n")
    )
    (lab / "overnight.toml").write_text(config)
    subprocess.run(["git", "-C", str(lab), "commit", "-qam", "on ray"], check=True)
    return lab


def events(lab: Path, kind: str) -> list[dict[str, object]]:
    store = open_store(store_url(lab))
    try:
        run = store.latest_run("toy")
        assert run is not None
        return [
            {**e.payload, "trial": e.trial}
            for e in store.events(run.id, limit=100000)
            if e.kind == kind
        ]
    finally:
        store.close()


def test_trials_run_on_both_workers_with_their_gpu_and_stream_their_logs(
    cluster: Cluster, tmp_path: Path
) -> None:
    lab = ray_lab(tmp_path / "lab")
    done = cluster.overnight("run", str(lab), "--trials", "6")
    assert done.returncode == 0, done.stdout + done.stderr

    placed = events(lab, "trial.placed")
    assert len({p["node"] for p in placed}) == 2, placed  # both workers, never the head
    assert {p["cuda_visible_devices"] for p in placed} == {"0"}
    store = open_store(store_url(lab))
    try:
        run = store.latest_run("toy")
        assert run is not None
        trials = store.trials(run.id)
    finally:
        store.close()
    measured = [t for t in trials if t.metric is not None]
    assert len(measured) >= 6, [(t.number, t.status, t.reason) for t in trials]
    for trial in measured:
        log = Path(trial.log_path or "").read_text()
        assert "training on 0" in log and "score: " in log, log
        assert trial.peak_rss_mb is not None and trial.peak_rss_mb > 1


def test_without_ray_installed_the_lab_says_what_to_install(tmp_path: Path) -> None:
    lab = ray_lab(tmp_path / "lab")
    hide = tmp_path / "no-ray"
    hide.mkdir()
    (hide / "sitecustomize.py").write_text("import sys\nsys.modules['ray'] = None\n")
    done = run_cli("run", str(lab), "--trials", "1", env={"PYTHONPATH": f"{hide}:{ROOT}"})
    assert done.returncode == 2, done.stdout + done.stderr
    assert "but Ray is not installed here" in done.stderr, done.stderr
    assert "fix: pip install 'overnight[ray]'" in done.stderr, done.stderr
    assert not (lab / ".overnight" / "overnight.db").exists()


def test_an_unreachable_cluster_is_one_clear_error_naming_the_address(tmp_path: Path) -> None:
    pytest.importorskip("ray")
    lab = ray_lab(tmp_path / "lab", address="127.0.0.1:1")
    done = run_cli("run", str(lab), "--trials", "1")
    assert done.returncode != 0
    assert "no Ray cluster answers at 127.0.0.1:1" in done.stderr, done.stderr
    assert "fix: start the cluster first" in done.stderr, done.stderr
    assert "Traceback" not in done.stderr
    assert not (lab / ".overnight" / "overnight.db").exists()  # refused before any run began


def trials_of(lab: Path) -> list[Trial]:
    store = open_store(store_url(lab))
    try:
        run = store.latest_run("toy")
        return store.trials(run.id) if run is not None else []
    finally:
        store.close()


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


def finish(proc: subprocess.Popen[str], timeout: float = 300) -> str:
    """What `proc` printed once it ended (killed, with its group, if it is still running
    after `timeout`)."""
    try:
        out, _ = proc.communicate(timeout=timeout)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate()
    return out


def test_a_worker_node_lost_mid_trial_interrupts_it_and_runs_it_again_once(
    cluster: Cluster, tmp_path: Path
) -> None:
    lab = ray_lab(tmp_path / "lab", agents=1)
    hold = lab / ".git" / "hold"
    proc = cluster.start("run", str(lab), "--trials", "2", "--no-ui")
    try:
        wait_until(lambda: any(t.status.value == "kept" for t in trials_of(lab)), 180)
        hold.touch()  # the next trial runs until the node under it is gone
        wait_until(lambda: any(p["trial"] != 1 for p in events(lab, "trial.placed")), 120)
        placed = next(p for p in events(lab, "trial.placed") if p["trial"] != 1)
        os.kill(raylet_of(str(placed["node"])), signal.SIGKILL)
        wait_until(lambda: bool(events(lab, "executor.node_lost")), 180)
        hold.unlink()
        out = finish(proc)
    finally:
        hold.unlink(missing_ok=True)
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate()
        cluster.add_worker()  # the next test has two workers again
    assert proc.returncode == 0, out
    lost = events(lab, "executor.node_lost")
    assert [e["node"] for e in lost] == [placed["node"]], lost
    trials = {t.number: t for t in trials_of(lab)}
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
    lab = ray_lab(tmp_path / "lab", agents=1, extra='sandbox = "none"')
    hold = lab / ".git" / "hold"
    proc = cluster.start("run", str(lab), "--trials", "3", "--no-ui")
    try:
        wait_until(lambda: any(t.status.value == "kept" for t in trials_of(lab)), 180)
        hold.touch()
        wait_until(lambda: any(p["trial"] != 1 for p in events(lab, "trial.placed")), 120)
        placed = next(p for p in events(lab, "trial.placed") if p["trial"] != 1)
        number = str(placed["trial"])
        wait_until(lambda: bool(experiment_of(number)), 30)
        left = experiment_of(number)
        os.kill(proc.pid, signal.SIGKILL)  # nsenter execs overnight: this is the run
        finish(proc)
        # Ray ends the tasks of a driver that died and the processes they started (its
        # workers are their subreaper), long before their watchdog would
        wait_until(lambda: all(process_gone(pid) for pid in left), 10)  # budget: 20 s
        hold.unlink()
        resumed = cluster.overnight("run", str(lab), "--trials", "1", "--no-ui")
    finally:
        hold.unlink(missing_ok=True)
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate()
        for pid in experiment_of(str(placed["trial"])) if "placed" in locals() else []:
            os.kill(pid, signal.SIGKILL)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    trials = {t.number: t for t in trials_of(lab)}
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


def test_a_trial_no_node_could_hold_is_refused_at_the_start(
    cluster: Cluster, tmp_path: Path
) -> None:
    lab = ray_lab(tmp_path / "lab")
    config = (lab / "overnight.toml").read_text().replace('{"a100" = 1}', '{"h100" = 1}')
    (lab / "overnight.toml").write_text(config)
    subprocess.run(["git", "-C", str(lab), "commit", "-qam", "h100"], check=True)
    done = cluster.overnight("run", str(lab), "--trials", "1", "--no-ui")
    assert done.returncode == 2, done.stdout + done.stderr
    assert "no node of the Ray cluster at 127.0.0.1:6380 has what one trial reserves" in (
        done.stderr
    ), done.stderr
    assert "h100 = 1" in done.stderr and "fix: start nodes that declare it" in done.stderr
    assert not (lab / ".overnight" / "overnight.db").exists()


def test_a_run_that_changes_a_protected_file_on_its_node_is_rejected(
    cluster: Cluster, tmp_path: Path
) -> None:
    lab = ray_lab(tmp_path / "lab", agents=1)
    proc = cluster.start("run", str(lab), "--trials", "1", "--no-ui")
    try:
        wait_until(
            lambda: (
                proc.poll() is not None or any(t.status.value == "kept" for t in trials_of(lab))
            ),
            180,
        )
        (lab / ".git" / "tamper").touch()  # every trial after the baseline
        out = finish(proc)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate()
    assert proc.returncode == 0, out
    rejected = [t for t in trials_of(lab) if t.agent != "baseline"]
    assert rejected and all(t.status.value == "rejected" for t in rejected), rejected
    assert all(
        t.reason == "integrity: the run protected file(s) modified: judge.py" for t in rejected
    ), [t.reason for t in rejected]
    assert (lab / "judge.py").read_text() == "# the protected evaluator\n"  # only its copy
