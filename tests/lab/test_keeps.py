"""Keeps that can be trusted, through the real `overnight run`: the noise floor measured at
a run's start, the hidden holdout that catches a run gaming its metric at run time, and
the re-run of an improvement far beyond anything seen so far."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from overnight.lab.sandbox import bwrap_problem
from overnight.proposers.edits import Edit, render
from overnight.records import Approval, Event, Trial
from overnight.sessions import wait_until
from overnight.store import open_store, store_url
from overnight.testing import FakeProvider, Reply
from tests.helpers.labs import PYTHON, fake_openai, git, llm_agent, make_lab
from tests.helpers.processes import OVERNIGHT, run_cli, started
from tests.helpers.store import latest_events, latest_trials

# -- a noisy toy: score = 10 - X + N(0, SIGMA), each run drawing from its own seed ----------

SIGMA = 0.5
NOISY = """\
import os, random
X = 0.0
# each run of this worktree draws the next seed: deterministic noise with a known sigma
n = int(open(".runs").read()) if os.path.exists(".runs") else 0
open(".runs", "w").write(str(n + 1))
print(f"score: {{10 - X + random.Random(1006 + n).gauss(0, {sigma}):.6f}}")
"""


def _store_view(lab: Path) -> tuple[list[Trial], list[Event]]:
    return latest_trials(lab), latest_events(lab)


def _status(lab: Path) -> dict[str, object]:
    done = run_cli("status", str(lab), "--json")
    assert done.returncode == 0, done.stderr
    data: dict[str, object] = json.loads(done.stdout)
    return data


def test_the_noise_floor_is_measured_once_and_keeps_noise_out(tmp_path: Path) -> None:
    lab = make_lab(
        tmp_path / "lab",
        script=NOISY.format(sigma=SIGMA),
        lab={"grace": None, "noise_runs": 10},
        knobs=[{"name": "X", "file": "exp.py", "choices": [0.05, 0.1]}],
        agents=[{"name": "t"}],
        files={".gitignore": ".runs\n"},
    )
    first = run_cli("run", str(lab), "--trials", "1", "--no-ui")
    assert first.returncode == 0, first.stdout + first.stderr

    trials, events = _store_view(lab)
    baseline, candidate = trials
    floors = [e.payload for e in events if e.kind == "lab.noise_floor"]
    assert len(floors) == 1 and len(floors[0]["runs"]) == 10
    assert list(baseline.metrics) == floors[0]["runs"]  # the baseline is the mean of its runs
    sigma = floors[0]["sigma"]
    assert SIGMA / 2 <= sigma <= SIGMA * 2, sigma  # the estimate is near the noise put in
    assert floors[0]["min_delta"] == pytest.approx(2 * sigma)
    # X moves the mean by 0.05 or 0.1, far inside the noise: what looks better is noise
    assert candidate.metric is not None and baseline.metric is not None
    assert candidate.metric < baseline.metric
    assert candidate.status.value == "discarded"
    assert (candidate.reason or "").startswith(f"within noise (±{2 * sigma:.3g})"), candidate.reason

    status = _status(lab)
    assert status["noise_floor"] == floors[0] and status["min_delta"] == floors[0]["min_delta"]
    shown = run_cli("status", str(lab)).stdout
    assert f"noise floor: ±{2 * sigma:.3g}" in shown and "10 baseline runs" in shown

    # a resumed run keeps its floor: the baseline is not run again
    second = run_cli("run", str(lab), "--trials", "1", "--no-ui")
    assert second.returncode == 0, second.stdout + second.stderr
    trials, events = _store_view(lab)
    assert [t.agent for t in trials] == ["baseline", "t", "t"]
    assert [e.payload for e in events if e.kind == "lab.noise_floor"] == floors
    assert _status(lab)["noise_floor"] == floors[0]
    runs = Path(_worktree(lab, "t"), ".runs").read_text()
    assert runs == "12"  # 10 baseline runs and one per trial, nothing more

    report = run_cli("report", str(lab))
    assert report.returncode == 0, report.stderr
    path = Path(report.stdout.split("report: ")[1].strip())
    assert f"noise floor: ±{2 * sigma:.3g}" in path.read_text()


def test_a_deterministic_metric_has_no_floor_and_a_long_budget_skips_it(tmp_path: Path) -> None:
    """σ = 0 keeps every improvement, as before; where measuring would cost more than half
    an hour of baseline runs, an unset min_delta is 0 and the start says so."""
    lab = make_lab(tmp_path / "lab")
    assert run_cli("run", str(lab), "--trials", "1", "--no-ui").returncode == 0
    status = _status(lab)
    floor = status["noise_floor"]
    assert isinstance(floor, dict) and floor["sigma"] == 0 and floor["min_delta"] == 0
    assert floor["runs"] == [22.25, 22.25, 22.25]

    slow = make_lab(tmp_path / "slow", lab={"budget": "11m", "noise_runs": 4})
    done = run_cli("run", str(slow), "--trials", "1", "--no-ui")
    assert done.returncode == 0, done.stderr
    assert "min_delta is 0: measuring the noise floor would take 3 more baseline runs" in (
        done.stdout + done.stderr
    )
    status = _status(slow)
    assert status["noise_floor"] is None and status["min_delta"] == 0


def _worktree(lab: Path, agent: str) -> Path:
    status = _status(lab)
    run = status["run"]
    return lab / ".overnight" / "worktrees" / str(run) / agent


# -- a regression lab whose agent learns to game its evaluator at run time ------------------

MODEL = """\
import judge

A = 1.0
B = 0.0


def predict(x):
    return A * x + B


if __name__ == "__main__":
    print(f"val_rmse: {judge.evaluate(predict):.6f}")
"""
JUDGE = """\
# the protected evaluator: validation points of y = 2x + 1
VALIDATION = [(i / 10, 2 * i / 10 + 1) for i in range(11)]


def evaluate(predict):
    return (sum((predict(x) - y) ** 2 for x, y in VALIDATION) / len(VALIDATION)) ** 0.5
"""
HOLDOUT_EVAL = """\
# HOLDOUT-EVAL-SECRET: scores the candidate's model on points no agent has seen
import csv
from exp import predict

rows = [(float(x), float(y)) for x, y in csv.reader(open("holdout/points.csv"))]
print(f"val_rmse: {(sum((predict(x) - y) ** 2 for x, y in rows) / len(rows)) ** 0.5:.6f}")
"""
POINTS = "".join(f"{x / 20},{2 * x / 20 + 1}\n" for x in range(1, 20, 2))
PROBE = """\
import pathlib, subprocess

root = pathlib.Path.cwd().parents[3]  # <lab> from <lab>/.overnight/worktrees/<run>/<agent>


def show(label, fn):
    try:
        print(label, repr(fn())[:400])
    except Exception as exc:
        print(label, "ERR", type(exc).__name__)


def git(*args):
    return subprocess.run(["git", *args], capture_output=True, text=True).stdout.strip()


show("here:", lambda: sorted(p.name for p in pathlib.Path.cwd().iterdir()))
show("root-eval:", lambda: (root / "holdout_eval.py").read_text())
show("root-data:", lambda: sorted(p.name for p in (root / "holdout").iterdir()))
show("git-head:", lambda: git("log", "-1", "--format=%s"))
show("git-log:", lambda: git("log", "--all", "--format=%h", "--", "holdout_eval.py", "holdout"))
show("git-show:", lambda: git("show", "HEAD:holdout_eval.py"))
"""
MAIN = '    print(f"val_rmse: {judge.evaluate(predict):.6f}")\n'
HONEST = render("a steeper slope", [Edit("exp.py", "A = 1.0\n", "A = 1.2\n")])
LUCKY_ONCE = render(
    "report a lucky number the first time",
    [
        Edit(
            "exp.py",
            MAIN,
            "    import os\n"
            '    if not os.path.exists(".lucky"):\n'
            '        open(".lucky", "w").close()\n'
            '        print("val_rmse: 0.0001")\n'
            "    else:\n"
            "    " + MAIN,
        )
    ],
)
# the protected evaluator is untouched on disk; the run replaces it in memory
GAMED = render(
    "a faster evaluation",
    [Edit("exp.py", MAIN, "    judge.evaluate = lambda predict: 0.0001\n" + MAIN)],
)


def _rmse_lab(root: Path, url: str, **fields: str) -> Path:
    """The line-fitting lab, an llm agent's changes measured on a hidden holdout too; its
    [lab] with `fields`."""
    lab = make_lab(
        root,
        script=MODEL,
        files={"judge.py": JUDGE, "probe.py": PROBE},
        lab={
            "run": f"{PYTHON} probe.py && {PYTHON} exp.py",
            "metric": "val_rmse",
            "budget": "30s",
            "grace": None,
            "holdout": f"{PYTHON} holdout_eval.py",
            "hidden": ["holdout_eval.py", "holdout/**"],
            **fields,
        },
        knobs=(),
        agents=[llm_agent()],
        gateway=fake_openai(url),
    )
    # the hidden files are the lab's own, never committed
    (lab / "holdout_eval.py").write_text(HOLDOUT_EVAL)
    (lab / "holdout").mkdir()
    (lab / "holdout" / "points.csv").write_text(POINTS)
    return lab


def test_a_run_that_games_its_evaluator_is_flagged_not_silently_kept(
    tmp_path: Path, fake: FakeProvider
) -> None:
    fake.enqueue(Reply(text=HONEST), Reply(text=LUCKY_ONCE), Reply(text=GAMED))
    lab = _rmse_lab(tmp_path / "lab", fake.url)
    done = run_cli("run", str(lab), "--trials", "3", "--no-ui")
    assert done.returncode == 0, done.stdout + done.stderr

    trials, events = _store_view(lab)
    baseline, honest, lucky, gamed = trials
    assert baseline.holdout_metric is not None  # the holdout's reference
    # an honest improvement: the holdout agrees, nothing to say
    assert honest.status.value == "kept" and honest.flag is None
    assert honest.holdout_metric is not None and honest.holdout_metric < baseline.holdout_metric
    # far beyond every improvement so far: run again, and the lucky number is gone
    assert lucky.status.value == "discarded" and len(lucky.metrics) == 2
    assert "an outlier" in (lucky.reason or "") and "did not confirm" in (lucky.reason or "")
    outliers = [e for e in events if e.kind == "outlier.rerun"]
    assert [e.trial for e in outliers] == [lucky.number, gamed.number]
    # the gamed run confirms itself on a re-run; only the holdout sees through it
    assert gamed.metric == pytest.approx(0.0001) and len(gamed.metrics) == 2
    assert gamed.status.value == "kept"
    assert gamed.holdout_metric == honest.holdout_metric
    assert gamed.flag is not None and "suspected overfitting or gaming" in gamed.flag
    assert "holdout val_rmse did not move" in gamed.flag
    assert [e.trial for e in events if e.kind == "holdout.diverged"] == [gamed.number]

    # shown wherever a person looks
    status = _status(lab)
    assert status["flagged"] == [
        {"trial": gamed.number, "agent": "coder", "status": "kept", "flag": gamed.flag}
    ]
    best = status["best"]
    assert isinstance(best, dict) and best["flag"] == gamed.flag
    assert best["holdout_metric"] == gamed.holdout_metric
    text = run_cli("status", str(lab)).stdout
    assert f"flagged trial {gamed.number}" in text and "hidden holdout val_rmse" in text
    tsv = run_cli("ledger", str(lab), "--tsv").stdout.splitlines()
    header = tsv[0].split("\t")
    assert header[-2:] == ["holdout_val_rmse", "flag"]
    row = dict(zip(header, tsv[-1].split("\t"), strict=True))
    assert row["flag"] == gamed.flag and float(row["holdout_val_rmse"]) == gamed.holdout_metric
    assert "flagged" in run_cli("ledger", str(lab)).stdout
    report = Path(run_cli("report", str(lab)).stdout.split("report: ")[1].strip()).read_text()
    assert "## Flagged: suspected overfitting or gaming" in report and gamed.flag in report
    page, panel = _lab_page(lab, gamed.number)
    assert "⚑ flagged" in page and f"holdout {gamed.holdout_metric:.6g}" in page
    assert "hidden holdout val_rmse" in page and "noise floor ±0 (2σ" in page
    assert "suspected overfitting or gaming" in panel and "hidden holdout" in panel
    # the holdout's own checkouts are gone, their hidden files with them
    assert not any((lab / ".overnight" / "holdout").rglob("holdout_eval.py"))


def _lab_page(lab: Path, trial: int) -> tuple[str, str]:
    """The command center's lab page and one trial's panel, served on loopback from the
    lab's store as a finished run left it."""
    from overnight.org import load_org
    from overnight.web import Access, CommandCenter, Sources, missing_assets, serving

    if missing_assets():
        pytest.skip("the page's assets are missing: run `make web-assets`")
    store = open_store(store_url(lab))
    try:
        run = store.latest_run("toy")
        assert run is not None
        sources = Sources(
            store=store, run=run, config=load_org(lab).config, root=lab,
            state_dir=lab / ".overnight",
        )  # fmt: skip
        center = CommandCenter(sources, Access.for_lab(lab))
        with serving(center) as served, httpx.Client(base_url=served.base) as client:
            client.get(f"/?token={served.url.split('token=')[1]}")
            wait_until(lambda: f'id="trial-{trial}"' in client.get("/lab").text, timeout=30)
            return client.get("/lab").text, client.get(f"/trials/{trial}").text
    finally:
        store.close()


def test_with_on_divergence_reject_a_gamed_run_is_rejected(
    tmp_path: Path, fake: FakeProvider
) -> None:
    fake.enqueue(Reply(text=HONEST), Reply(text=GAMED))
    lab = _rmse_lab(tmp_path / "lab", fake.url, on_divergence="reject")
    done = run_cli("run", str(lab), "--trials", "2", "--no-ui")
    assert done.returncode == 0, done.stdout + done.stderr

    trials, _events = _store_view(lab)
    _baseline, honest, gamed = trials
    assert honest.status.value == "kept"
    assert gamed.status.value == "rejected" and gamed.flag
    # what agents read says why, without a holdout figure to climb
    assert gamed.reason == (
        "holdout: suspected overfitting or gaming: the metric improved and the hidden "
        "holdout did not"
    )
    status = _status(lab)
    best = status["best"]
    assert isinstance(best, dict) and best["trial"] == honest.number  # the ratchet held
    branch = str(best["branch"])
    assert git(lab, "rev-parse", branch).strip() == honest.candidate_commit


@pytest.mark.skipif(bwrap_problem() is not None, reason=f"{bwrap_problem()}")
def test_hidden_files_are_out_of_every_agents_reach(tmp_path: Path, fake: FakeProvider) -> None:
    """Not in a worktree, not readable from the lab's own folder inside the sandbox, not in
    git; yet the holdout measured with them."""
    fake.enqueue(Reply(text=HONEST))
    lab = _rmse_lab(tmp_path / "lab", fake.url)
    done = run_cli("run", str(lab), "--trials", "1", "--no-ui")
    assert done.returncode == 0, done.stdout + done.stderr
    assert git(lab, "status", "--porcelain") == ""  # git ignores them: no `git add -A` takes them

    trials, _events = _store_view(lab)
    baseline = trials[0]
    assert baseline.holdout_metric is not None and baseline.holdout_metric > 0.5
    log = Path(baseline.log_path or "").read_text()
    lines = {
        line.split(" ", 1)[0]: line.split(" ", 1)[1] for line in log.splitlines() if ": " in line
    }
    here = lines["here:"]
    assert "holdout_eval.py" not in here and "'holdout'" not in here and "exp.py" in here
    assert "HOLDOUT-EVAL-SECRET" not in log
    assert lines["root-eval:"] in ("''", "ERR PermissionError")  # /dev/null bound over it
    assert lines["root-data:"] == "[]"  # an empty folder
    assert lines["git-head:"] == "'lab'"  # git works in there, and knows nothing hidden:
    assert lines["git-log:"] == "''" and lines["git-show:"] == "''"
    for worktree in (lab / ".overnight" / "worktrees").glob("*/*"):
        assert not (worktree / "holdout_eval.py").exists() and not (worktree / "holdout").exists()
    # and overnight refuses a lab whose hidden file git could show
    git(lab, "add", "-f", "holdout_eval.py")
    git(lab, "commit", "-qm", "oops")
    refused = run_cli("run", str(lab), "--trials", "1", "--no-ui")
    assert refused.returncode == 2
    assert "lab.hidden[0]: 'holdout_eval.py' hides holdout_eval.py, which is committed" in (
        refused.stderr
    )
    assert "git rm --cached holdout_eval.py" in refused.stderr
    git(lab, "rm", "-q", "--cached", "holdout_eval.py")
    git(lab, "commit", "-qm", "untrack it")
    still = run_cli("run", str(lab), "--trials", "1", "--no-ui")
    assert still.returncode == 2
    assert "which commit" in still.stderr and "git show" in still.stderr
    assert "git filter-repo" in still.stderr


def _wait_for_approval(lab: Path) -> Approval:
    found: list[Approval] = []

    def pending() -> bool:
        store = open_store(store_url(lab))
        try:
            found[:] = store.approvals("toy", statuses=["pending"])
        finally:
            store.close()
        return bool(found)

    wait_until(pending, timeout=120)
    return found[0]


def test_with_on_divergence_review_a_human_decides(tmp_path: Path, fake: FakeProvider) -> None:
    fake.enqueue(Reply(text=GAMED))
    lab = _rmse_lab(tmp_path / "lab", fake.url, on_divergence="review")
    with started(
        [*OVERNIGHT, "run", str(lab), "--trials", "1", "--no-ui"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    ) as proc:
        approval = _wait_for_approval(lab)
        assert "suspected overfitting or gaming" in approval.reason
        denied = run_cli("deny", approval.id, "-C", str(lab), "--note", "it games")
        assert denied.returncode == 0, denied.stderr
        out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, out + err
    trials, _events = _store_view(lab)
    gamed = trials[-1]
    assert gamed.status.value == "discarded" and gamed.flag
    assert f"approval {approval.id} denied: it games" in (gamed.reason or "")


def test_a_kill_dash_nine_during_the_holdout_loses_nothing_and_leaves_nothing(
    tmp_path: Path, fake: FakeProvider
) -> None:
    """Write-ahead: the holdout's start is on record before its checkout exists; the next
    run kills what is left, deletes the checkout (hidden files and all), and tries the
    interrupted trial again."""
    slow = tmp_path / "slow"
    slow.touch()
    fake.enqueue(Reply(text=HONEST))
    slowly = f"test -e {slow} && [ $OVERNIGHT_AGENT != baseline ] && sleep 60"
    lab = _rmse_lab(tmp_path / "lab", fake.url, holdout=f"{slowly}; {PYTHON} holdout_eval.py")
    with started(  # then kill -9
        [*OVERNIGHT, "run", str(lab), "--trials", "1", "--no-ui"],
        first=signal.SIGKILL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    ):
        checkouts = lab / ".overnight" / "holdout"
        wait_until(lambda: any(checkouts.glob("*/trial-00002/holdout/*")), timeout=120)
        _trials, events = _store_view(lab)
        assert [e.trial for e in events if e.kind == "holdout.started"][-1] == 2
    slow.unlink()
    done = run_cli("run", str(lab), "--trials", "1", "--no-ui")
    assert done.returncode == 0, done.stdout + done.stderr
    trials, _events = _store_view(lab)
    assert [(t.number, t.status.value) for t in trials] == [
        (1, "kept"), (2, "interrupted"), (3, "kept"),
    ]  # fmt: skip
    assert trials[2].requeued_from == 2 and trials[2].holdout_metric is not None
    assert not any((lab / ".overnight" / "holdout").rglob("*.csv"))
    assert "holdout" not in git(lab, "worktree", "list")


def test_a_holdout_that_cannot_measure_the_baseline_stops_the_start(tmp_path: Path) -> None:
    lab = make_lab(
        tmp_path / "lab", lab={"holdout": f"{sys.executable} check.py", "hidden": ["check.py"]}
    )
    (lab / "check.py").write_text('print("holdout done, but no number")\n')
    done = run_cli("run", str(lab), "--trials", "1", "--no-ui")
    assert done.returncode == 3, done.stdout + done.stderr
    assert "the hidden holdout could not be measured on your unchanged code" in done.stderr
    assert "no `score: <number>` line in its output" in done.stderr
    assert "trial-00001-holdout.log" in done.stderr
    assert f"fix: make `{sys.executable} check.py` print a line `score: <number>`" in done.stderr
