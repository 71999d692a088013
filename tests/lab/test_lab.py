"""The trial ratchet through its real interfaces: the `overnight` CLI and the Lab service API."""

from __future__ import annotations

import itertools
import json
import os
import signal
import subprocess
import threading
from pathlib import Path

import optuna

from overnight.lab.git import Git
from overnight.lab.lab import Lab
from overnight.lab.proposal import Proposal
from overnight.proposers.optuna import study_name
from overnight.records import TrialStatus as S
from overnight.sessions import wait_until
from overnight.store import store_url
from overnight.wiring import Checks
from tests.helpers.labs import git, make_lab
from tests.helpers.processes import OVERNIGHT, process_gone, run_cli, started, stop
from tests.helpers.store import lab_store, latest_agents, latest_trials

FINAL_STATUSES = {"kept", "discarded", "rejected", "crashed", "timed_out", "interrupted"}


def test_run_keeps_only_improvements_and_branches_point_at_the_best(tmp_path: Path) -> None:
    lab = make_lab(tmp_path / "lab", lab={"parallel": 2}, agents=[{"name": "t", "count": 2}])
    result = run_cli("run", str(lab), "--trials", "8")
    assert result.returncode == 0, result.stderr
    assert "best score" in result.stdout
    trials = latest_trials(lab)
    assert trials[0].agent == "baseline" and trials[0].metric == 22.25
    assert sum(1 for t in trials if t.agent != "baseline") == 8
    for agent in latest_agents(lab):
        mine = [t for t in trials if t.agent == agent.name]
        kept = [t.metric for t in mine if t.status == "kept"]
        # the ratchet only moves to strictly better metrics
        assert kept == sorted(kept, reverse=True) and len(set(kept)) == len(kept)
        # the branch points at the best commit, and the worktree sits there, clean
        assert git(lab, "rev-parse", f"refs/heads/{agent.branch}").strip() == agent.best_commit
        worktree = Path(agent.worktree)
        assert git(worktree, "rev-parse", "HEAD").strip() == agent.best_commit
        assert git(worktree, "status", "--porcelain") == ""
        for t in mine:
            if t.status == "discarded":
                # never lost: the discarded change is in the store
                assert "+X = " in str(t.diff) or "+Y = " in str(t.diff)
                assert "does not beat the best" in str(t.reason)
    # the user's own checkout was never touched
    assert git(lab, "status", "--porcelain") == ""
    assert git(lab, "rev-parse", "--abbrev-ref", "HEAD").strip() == "main"


def test_ledger_tsv_starts_with_autoresearch_columns(tmp_path: Path) -> None:
    lab = make_lab(tmp_path / "lab")
    assert run_cli("run", str(lab), "--trials", "3").returncode == 0
    tsv = run_cli("ledger", str(lab), "--tsv").stdout.splitlines()
    assert tsv[0].split("\t")[:5] == ["commit", "score", "memory_gb", "status", "description"]
    rows = [line.split("\t") for line in tsv[1:]]
    assert len(rows) == 4
    assert rows[0][3:5] == ["keep", "baseline"]
    assert {r[3] for r in rows} <= {"keep", "discard", "crash"}
    assert all(float(r[2]) >= 0 for r in rows)  # the peak RSS of each run, in GB
    assert all(len(r[0]) == 7 for r in rows)


def test_status_json_and_report(tmp_path: Path) -> None:
    lab = make_lab(tmp_path / "lab")
    assert run_cli("run", str(lab), "--trials", "4").returncode == 0
    status = json.loads(run_cli("status", str(lab), "--json").stdout)
    assert status["trials"]["total"] == 4
    assert status["baseline"] == 22.25
    assert status["best"]["metric"] <= 22.25
    assert status["running_pid"] is None
    out = tmp_path / "report.html"
    result = run_cli("report", str(lab), "--out", str(out))
    assert result.returncode == 0, result.stderr
    page = out.read_text()
    assert "data:image/png;base64," in page and "baseline 22.25 → best" in page
    md = run_cli("report", str(lab))
    path = Path(md.stdout.split("report: ")[1].strip())
    assert path.with_name("report-progress.png").stat().st_size > 10_000


def test_resume_continues_the_run_and_its_study(tmp_path: Path) -> None:
    lab = make_lab(tmp_path / "lab")
    assert run_cli("run", str(lab), "--trials", "3").returncode == 0
    second = run_cli("run", str(lab), "--trials", "3")
    assert second.returncode == 0 and "resuming run" in second.stdout
    trials = latest_trials(lab)
    assert [t.number for t in trials] == list(range(1, 8))
    assert len({t.run_id for t in trials}) == 1
    url = store_url(lab)
    study = optuna.load_study(study_name=study_name(trials[0].run_id), storage=url)
    complete = [t for t in study.trials if t.state.is_finished()]
    assert len(complete) == 7  # 6 trials + the seeded baseline, each told exactly once


def test_new_run_starts_from_head(tmp_path: Path) -> None:
    lab = make_lab(tmp_path / "lab")
    assert run_cli("run", str(lab), "--trials", "1").returncode == 0
    first = latest_trials(lab)
    assert run_cli("run", str(lab), "--trials", "1", "--new").returncode == 0
    second = latest_trials(lab)
    assert len({t.run_id for t in first + second}) == 2
    with lab_store(lab) as store:  # the first run's trials are still on record
        assert store.trials(first[0].run_id) == first


def test_parallel_agents_share_one_study(tmp_path: Path) -> None:
    lab = make_lab(tmp_path / "lab", lab={"parallel": 2}, agents=[{"name": "t", "count": 3}])
    assert run_cli("run", str(lab), "--trials", "9").returncode == 0
    trials = latest_trials(lab)
    by_agent = {t.agent for t in trials}
    assert by_agent == {"baseline", "t-1", "t-2", "t-3"}
    optuna_numbers = [t.proposal.get("optuna_trial") for t in trials[1:]]
    assert len(set(optuna_numbers)) == 9  # one study, no point proposed twice by two agents
    run_id = trials[0].run_id
    study = optuna.load_study(study_name=study_name(run_id), storage=store_url(lab))
    assert len(study.trials) == 10


def test_optuna_agents_make_their_next_change_while_their_trial_runs(tmp_path: Path) -> None:
    """An optuna agent's next point is drawn, and its change written, while its trial still
    runs (so a freed slot starts its next experiment sooner); each trial is still its own
    commit on its agent's best, numbered in its message, with the diff the ledger holds,
    no point is left asked and untried in the study, and the checkouts those changes were
    made in are gone once the run ends."""
    lab = make_lab(tmp_path / "lab", lab={"parallel": 2}, agents=[{"name": "t", "count": 2}])
    result = run_cli("run", str(lab), "--trials", "12")
    assert result.returncode == 0, result.stderr
    trials = latest_trials(lab)
    assert sum(1 for t in trials if t.agent != "baseline") == 12
    study = optuna.load_study(study_name=study_name(trials[0].run_id), storage=store_url(lab))
    drawn = {s.number: s.datetime_start.timestamp() for s in study.trials if s.datetime_start}
    early = 0
    for agent in ("t-1", "t-2"):
        mine = [t for t in trials if t.agent == agent]
        for before, after in itertools.pairwise(mine):
            early += drawn[after.proposal["optuna_trial"]] < (before.finished_at or 0)
    assert early >= 4, early  # (not after each keep: that draw is made again on the new best)
    for t in trials[1:]:
        assert t.candidate_commit is not None
        assert git(lab, "rev-parse", f"{t.candidate_commit}^").strip() == t.parent_commit
        message = git(lab, "log", "-1", "--format=%s", t.candidate_commit)
        assert message.startswith(f"overnight trial {t.number}: "), message
        diff = git(
            lab, "diff", "--no-ext-diff", "--no-renames", t.parent_commit, t.candidate_commit
        )
        assert diff == t.diff
    states = {s.state for s in study.trials}
    assert states <= {optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.FAIL}
    assert "ahead" not in git(lab, "worktree", "list")
    assert not [p for p in (lab / ".overnight").rglob("*") if "ahead" in p.parts and p.is_file()]


def test_overnight_seed_repeats_the_tuners_proposals(tmp_path: Path) -> None:
    """OVERNIGHT_SEED seeds the optuna agents: a run repeated with the same seed proposes
    the same first knobs; another seed, other knobs; two agents, not the same point."""

    def first_proposals(name: str, seed: str) -> dict[str, object]:
        lab = make_lab(tmp_path / name, lab={"parallel": 2}, agents=[{"name": "t", "count": 2}])
        result = run_cli("run", str(lab), "--trials", "2", env={"OVERNIGHT_SEED": seed})
        assert result.returncode == 0, result.stderr
        firsts: dict[str, object] = {}
        for trial in latest_trials(lab)[1:]:
            firsts.setdefault(trial.agent, trial.proposal["params"])
        return firsts

    first = first_proposals("first", "7")
    assert set(first) == {"t-1", "t-2"} and first["t-1"] != first["t-2"]
    assert first_proposals("again", "7") == first
    assert first_proposals("other", "8") != first

    bad = run_cli("run", str(make_lab(tmp_path / "bad")), env={"OVERNIGHT_SEED": "seven"})
    assert bad.returncode == 2
    assert "OVERNIGHT_SEED='seven' is not a whole number" in bad.stderr


def test_run_that_writes_a_protected_file_is_rejected(tmp_path: Path) -> None:
    lab = make_lab(
        tmp_path / "lab",
        script="X = 0.5\nY = 5\nif X != 0.5:\n    open('judge.py', 'a').write('# gamed')\n"
        "print(f'score: {(X-3)**2 + (Y-1)**2}')\n",
    )
    assert run_cli("run", str(lab), "--trials", "2").returncode == 0
    rejected = [t for t in latest_trials(lab) if t.agent != "baseline"]
    assert {t.status for t in rejected} == {"rejected"}
    assert all("protected file(s) modified: judge.py" in str(t.reason) for t in rejected)


def test_trial_without_a_metric_line_crashes_with_the_log_tail(tmp_path: Path) -> None:
    lab = make_lab(
        tmp_path / "lab",
        script="X = 0.5\nY = 5\nprint('loss went to nan, giving up')\n"
        "if X == 0.5:\n    print(f'score: {(X-3)**2 + (Y-1)**2}')\n",
    )
    assert run_cli("run", str(lab), "--trials", "2").returncode == 0
    crashed = [t for t in latest_trials(lab) if t.agent != "baseline"]
    assert {t.status for t in crashed} == {"crashed"}
    assert all("no `score: <number>` line" in str(t.reason) for t in crashed)
    assert all("giving up" in str(t.log_tail) for t in crashed)


def test_trial_past_its_budget_is_killed_with_its_children(tmp_path: Path) -> None:
    lab = make_lab(
        tmp_path / "lab",
        script="import subprocess, time\nX = 0.5\nY = 5\n"
        "if X != 0.5:\n"
        "    subprocess.Popen(['sleep', '300'])\n"
        "    time.sleep(300)\n"
        "print(f'score: {(X-3)**2 + (Y-1)**2}')\n",
        lab={"budget": "1s", "grace": "0.5s"},
    )
    result = run_cli("run", str(lab), "--trials", "1")
    assert result.returncode == 0, result.stderr
    trial = latest_trials(lab)[-1]
    assert trial.status == "timed_out"
    assert 1.5 <= (trial.duration_s or 0) < 6
    assert "killed after 2s" in str(trial.reason)
    # the whole process group got SIGKILL; the orphaned child dies a moment later
    try:
        wait_until(lambda: not _sleeps_300(tmp_path), timeout=10)
    except TimeoutError:
        # Seen once in CI and not reproduced since: say who survived, and from where.
        raise AssertionError(f"the trial's child outlived it: {_sleeps_300(tmp_path)}") from None


def _sleeps_300(under: Path) -> list[str]:
    """Each live `sleep 300` started in a folder under `under` (this test's: not another
    test's or anyone's on the machine): its pid, state, parent, group and session, and its
    run marker."""
    found = []
    for proc in Path("/proc").iterdir():
        try:
            if not proc.name.isdigit() or (proc / "cmdline").read_bytes() != b"sleep\x00300\x00":
                continue
            if not os.readlink(proc / "cwd").startswith(str(under)):
                continue
            fields = (proc / "stat").read_text().rsplit(")", 1)[1].split()
            marks = [
                var.decode()
                for var in (proc / "environ").read_bytes().split(b"\0")
                if var.startswith(b"OVERNIGHT_")
            ]
        except OSError:
            continue  # gone meanwhile
        state, ppid, pgrp, session = fields[:4]
        found.append(f"pid {proc.name} state {state} ppid {ppid} pgrp {pgrp} sid {session} {marks}")
    return found


def test_gigabytes_of_output_are_capped_and_the_metric_still_read(tmp_path: Path) -> None:
    lab = make_lab(
        tmp_path / "lab",
        script="import sys\nX = 0.5\nY = 5\n"
        "if X != 0.5:\n"
        "    line = 'x' * 1023 + '\\n'\n"
        "    for _ in range(200 * 1024):\n"  # 200 MB
        "        sys.stdout.write(line)\n"
        "print(f'score: {(X-3)**2 + (Y-1)**2}')\n",
        lab={"max_log": "1MB"},
    )
    assert run_cli("run", str(lab), "--trials", "1").returncode == 0
    trial = latest_trials(lab)[-1]
    assert trial.status in ("kept", "discarded")
    assert trial.metric is not None
    log = Path(trial.log_path or "")
    assert log.stat().st_size < 1_200_000
    assert "bytes dropped here" in log.read_text()


def test_min_delta_and_confirm_runs(tmp_path: Path) -> None:
    lab = make_lab(tmp_path / "lab", lab={"confirm_runs": 2})
    assert run_cli("run", str(lab), "--trials", "6").returncode == 0
    for t in latest_trials(lab):
        metrics = t.metrics
        if t.status == "kept" and t.agent != "baseline":
            assert len(metrics) == 3  # measured, then confirmed twice
        if t.status == "discarded":
            assert len(metrics) in (1, 2, 3)
    huge = make_lab(tmp_path / "b", lab={"min_delta": 1000})
    assert run_cli("run", str(huge), "--trials", "3").returncode == 0
    assert {t.status for t in latest_trials(huge) if t.agent != "baseline"} == {"discarded"}


def test_proposals_outside_editable_are_rejected_by_the_guard(tmp_path: Path) -> None:
    lab = make_lab(tmp_path / "lab", files={"notes/other.txt": "hello\n"})
    started = Lab.start(lab, checks=Checks())
    try:
        stop = threading.Event()
        assert started.ensure_baseline(stop) is not None
        name = started.agents()[0].name

        def write(rel: str, text: str) -> Proposal:
            def apply(root: Path) -> None:
                (root / rel).write_text(text)

            return Proposal(f"edit {rel}", {"file": rel}, apply)

        protected = started.run_trial(name, write("judge.py", "# rigged\n"), stop)
        outside = started.run_trial(name, write("notes/other.txt", "changed\n"), stop)
        fine = started.run_trial(name, write("exp.py", "X = 3\nY = 1\nprint('score: 0')\n"), stop)
        assert protected.status is S.rejected and "protected file(s): judge.py" in str(
            protected.reason
        )
        assert outside.status is S.rejected and "outside `editable`" in str(outside.reason)
        assert fine.status is S.kept and fine.metric == 0
        wt = Git(Path(started.agent(name).worktree))
        assert wt.head() == fine.candidate_commit and wt.dirty() == []
        assert "# rigged" in str(protected.diff)  # rejected, but the attempt is on record
    finally:
        started.close()
    with lab_store(lab) as store:
        assert store.latest_run("toy") is not None


def test_up_runs_as_a_service_until_sigterm(tmp_path: Path) -> None:
    lab = make_lab(tmp_path / "lab")
    with started(
        [*OVERNIGHT, "up", str(lab)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    ) as proc:
        wait_until(
            lambda: (
                proc.poll() is not None
                or sum(1 for t in latest_trials(lab) if t.status in ("kept", "discarded")) >= 4
            ),
            timeout=60,
        )
        assert proc.poll() is None
        out, err = stop(proc, first=signal.SIGTERM, wait=30)
    assert proc.returncode == 0, err
    assert "trial    2 t" in out and "stopped" in out
    left = [(t.number, t.status) for t in latest_trials(lab) if t.status not in FINAL_STATUSES]
    assert left == [], f"trials left in flight by a clean stop: {left}\n{out}\n{err}"


def test_ctrl_c_during_the_baseline_stops_the_experiment_too(tmp_path: Path) -> None:
    lab = make_lab(tmp_path / "lab", script="import time\nX = 0.5\nY = 5\ntime.sleep(120)\n")
    with started(
        [*OVERNIGHT, "run", str(lab)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    ) as proc:
        # the baseline's experiment started
        wait_until(lambda: proc.poll() is not None or latest_trials(lab)[:1] != [], timeout=60)
        wait_until(lambda: proc.poll() is not None or latest_trials(lab)[0].pid, timeout=60)
        assert proc.poll() is None
        pid = latest_trials(lab)[0].pid
        assert pid is not None
        out, err = stop(proc, wait=30)  # Ctrl-C
    assert proc.returncode == 130, out + err
    trial = latest_trials(lab)[0]
    assert trial.status == "interrupted"
    assert process_gone(pid), "the experiment outlived the run that started it"


def test_an_agent_lock_held_by_a_forked_child_is_waited_for(tmp_path: Path) -> None:
    """A child forked while another thread's lock was held shares that flock until its
    exec; the next trial of that agent waits the moment out instead of failing."""
    import os

    from overnight.lab.lock import AgentLock

    lock = AgentLock(tmp_path, "run", "a1")
    assert lock.acquire()
    read, write = os.pipe()
    child = os.fork()
    if child == 0:  # the child holds the inherited lock until told to go
        os.close(write)
        os.read(read, 1)
        os._exit(0)
    os.close(read)
    lock.release()  # ours is gone, the child's copy still holds it
    other = AgentLock(tmp_path, "run", "a1")
    assert not other.acquire()  # no waiting: held
    timer = threading.Timer(0.3, lambda: os.close(write))  # the child "execs" soon
    timer.start()
    try:
        assert other.acquire(wait=5.0)
    finally:
        timer.join()
        os.waitpid(child, 0)
        other.release()


def test_two_labs_with_the_same_run_id_leave_each_others_experiments_alone(
    tmp_path: Path,
) -> None:
    """Run ids are the second a run began, so two labs started in the same second share
    one: starting (and cleaning up after) one must not kill the other's experiments."""
    from overnight.lab.resume import config_fingerprint
    from overnight.org import load_org

    hold = tmp_path / "first" / "hold"  # in the lab's folder, which the sandbox shows
    held = f"import os, time\nX = 0.5\nY = 5\nwhile os.path.exists({str(hold)!r}):\n"
    held += "    time.sleep(0.05)\nprint('score: 1')\n"
    first = make_lab(tmp_path / "first", script=held)
    hold.touch()
    try:
        with started(
            [*OVERNIGHT, "run", str(first), "--trials", "1", "--no-ui"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        ) as proc:  # fmt: skip
            wait_until(lambda: any(t.pid for t in latest_trials(first)), timeout=60)
            (baseline,) = latest_trials(first)
            assert baseline.pid is not None
            pid, run_id = baseline.pid, baseline.run_id

            # a second lab whose run has the same id, as if started in the same second
            second = make_lab(tmp_path / "second")
            with lab_store(second) as store:
                org = load_org(second)
                protected = {"judge.py": git(second, "rev-parse", "HEAD:judge.py").strip()}
                head = git(second, "rev-parse", "HEAD").strip()
                store.create_run(run_id, "toy", head, protected, config_fingerprint(org))
            result = run_cli("run", str(second), "--trials", "2", "--no-ui")
            assert result.returncode == 0, result.stderr
            assert {t.run_id for t in latest_trials(second)} == {run_id}
            assert latest_trials(second)[0].status is S.kept  # the baseline

            assert not process_gone(pid), "the second lab's start killed the first lab's experiment"
            hold.unlink()
            out, err = proc.communicate(timeout=120)
            assert proc.returncode == 0, out + err
            assert latest_trials(first)[0].status is S.kept
    finally:
        hold.unlink(missing_ok=True)


def test_worktrees_added_and_removed_from_many_threads_at_once_all_succeed(
    tmp_path: Path,
) -> None:
    """Agents make their next changes ahead in worktrees of their own, each in its own
    thread, side by side in one folder: git's bookkeeping of worktrees must not see one
    half-made by another, nor the folder go while another's is being added to it."""
    repo = tmp_path / "repo"
    repo.mkdir()
    git(repo, "init", "-q")
    git(repo, "commit", "-q", "--allow-empty", "-m", "start")
    lab_git = Git(repo)
    head = lab_git.run("rev-parse", "HEAD").strip()
    errors: list[str] = []

    def churn(i: int) -> None:
        try:
            for j in range(8):
                where = tmp_path / "ahead" / f"w{i}-{j}"
                lab_git.add_worktree(where, head)
                assert (where / ".git").exists()
                lab_git.remove_worktree(where, empty_parent=True)
        except Exception as exc:  # (said below, with the others')
            errors.append(str(exc))

    threads = [threading.Thread(target=churn, args=(i,)) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert lab_git.run("worktree", "list").count("\n") == 1  # the repository's own
    assert not (tmp_path / "ahead").exists()  # the last one out removed the folder
