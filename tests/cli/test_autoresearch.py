"""Coming from autoresearch: `overnight init` in a fork of it, `overnight import` of its
hand-kept results.tsv, `overnight run --new --from` one of its branches, and our ledger read
back the way autoresearch's analysis reads results.tsv (pandas, by column name).

Everything through the real CLI, on real git repositories laid out like autoresearch
(tests/cli/conftest.py: fork), with `uv run` where uv is (a stand-in otherwise)."""

from __future__ import annotations

import io
import json
import re
import subprocess
import sys
from pathlib import Path

import httpx
import pandas as pd
import pytest

from overnight.org import Goal, load_org, parse_config
from overnight.proposers.llm import history
from overnight.records import TrialStatus
from overnight.store import open_store, store_url
from overnight.web import Access, CommandCenter, Sources, serving
from tests.helpers.labs import git
from tests.helpers.processes import run_cli

AUTORESEARCH_COLUMNS = ["commit", "val_bpb", "memory_gb", "status", "description"]


def read_like_autoresearch(tsv: str) -> pd.DataFrame:
    """What autoresearch's analysis does with results.tsv: pandas, by column name; the
    status upper-cased and one of KEEP / DISCARD / CRASH; the first row the baseline."""
    df = pd.read_csv(io.StringIO(tsv), sep="\t")
    df["status"] = df["status"].str.strip().str.upper()
    assert set(df["status"]) <= {"KEEP", "DISCARD", "CRASH"}, df["status"]
    kept = df[df["status"] == "KEEP"]
    baseline = df.iloc[0]["val_bpb"]
    best = kept["val_bpb"].min()
    assert best <= baseline  # what its progress plot draws: the running best of the keeps
    assert df["memory_gb"].dtype.kind == "f" and df["description"].notna().all()
    crashes = df[df["status"] == "CRASH"]
    assert (crashes["val_bpb"] == 0).all() and (crashes["memory_gb"] == 0).all()
    return df


def train_bpb(repo: Path) -> float:
    """val_bpb of the checked-out train.py, run by hand as a person would."""
    out = subprocess.run(
        [sys.executable, "train.py"], cwd=repo, capture_output=True, text=True, check=True
    ).stdout
    match = re.search(r"^val_bpb:\s+(\S+)$", out, re.MULTILINE)
    assert match, out
    return float(match.group(1))


def test_init_in_a_fork_keeps_its_program_and_the_draft_runs_unedited(
    fork: tuple[Path, dict[str, str]],
) -> None:
    repo, env = fork
    program = (repo / "program.md").read_text()
    result = run_cli("init", str(repo), env=env)
    assert result.returncode == 0, result.stderr
    assert f"kept {repo / 'program.md'} as it is" in result.stdout
    assert (repo / "program.md").read_text() == program  # untouched
    assert "found the autoresearch layout: train.py edited, prepare.py protected" in result.stdout
    cfg = parse_config((repo / "overnight.toml").read_text(), repo / "overnight.toml")
    lab = cfg.lab
    assert (lab.editable, lab.protected, lab.metric, lab.goal.value) == (
        ["train.py"], ["prepare.py"], "val_bpb", "minimize",
    )  # fmt: skip
    # uv: the repository has pyproject.toml + uv.lock; the sandbox must let uv write its cache
    assert lab.run == "uv run train.py" and lab.writable == ["~/.cache/uv"]
    assert lab.record == ["peak_vram_mb"]
    assert lab.budget == 2  # TIME_BUDGET = 2 in prepare.py
    knobs = {k.name: k for k in cfg.knobs}
    assert list(knobs) == [
        "LEARNING_RATE",
        "BATCH_SIZE",
        "NUM_STEPS",
        "WEIGHT_DECAY",
        "WARMUP_RATIO",
    ]
    lr = knobs["LEARNING_RATE"]
    assert (lr.low, lr.high, lr.log) == (0.25, 1.0, True)
    assert knobs["BATCH_SIZE"].choices == [32, 64, 128]
    steps = knobs["NUM_STEPS"]
    assert (steps.low, steps.high, steps.int_) == (60, 240, True)
    assert (knobs["WARMUP_RATIO"].low, knobs["WARMUP_RATIO"].high) == (0.0, 0.5)
    text = (repo / "overnight.toml").read_text()
    assert "LEARNING_RATE = 0.5 (line 9): a learning rate" in text  # says where each came from

    # never clobbers: not the config without --force, never the program
    again = run_cli("init", str(repo), env=env)
    assert again.returncode == 2 and "already exists" in again.stderr
    assert "--force" in again.stderr and "program.md is never overwritten" in again.stderr
    forced = run_cli("init", str(repo), "--force", env=env)
    assert forced.returncode == 0, forced.stderr
    assert (repo / "program.md").read_text() == program

    # init, commit, run: the draft measures the baseline without an edit
    git(repo, "add", "overnight.toml")
    git(repo, "commit", "-qm", "overnight lab")
    ran = run_cli("run", str(repo), "--trials", "1", "--no-ui", env=env)
    assert ran.returncode == 0, ran.stdout + ran.stderr
    df = read_like_autoresearch(run_cli("ledger", str(repo), "--tsv").stdout)
    assert list(df.columns[:5]) == AUTORESEARCH_COLUMNS
    assert list(df.columns[-1:]) == ["peak_vram_mb"]  # `record`, after our columns
    baseline = df.iloc[0]
    assert (baseline["status"], baseline["description"]) == ("KEEP", "baseline")
    assert baseline["val_bpb"] == pytest.approx(train_bpb(repo), abs=1e-6)
    # memory_gb from the printed peak_vram_mb (256 + 64 * 4 MB), as autoresearch computes it
    assert (baseline["memory_gb"], baseline["peak_vram_mb"]) == (0.5, 512.0)
    assert len(df) == 2


def test_a_generic_repository_gets_a_draft_that_runs(tmp_path: Path) -> None:
    repo = tmp_path / "plain"
    repo.mkdir()
    git(repo, "init", "-q")
    (repo / "main.py").write_text(
        "HIDDEN = 64\nDROPOUT = 0.1\nSEED = 3\n"
        'print("epoch 1")\nprint(f"accuracy: {0.5 + HIDDEN / 1000 - DROPOUT / 10:.4f}")\n'
    )
    git(repo, "add", "-A")
    git(repo, "commit", "-qm", "code")
    result = run_cli("init", str(repo))
    assert result.returncode == 0, result.stderr
    assert f"wrote {repo / 'program.md'}" in result.stdout  # none there: drafted
    cfg = parse_config((repo / "overnight.toml").read_text(), repo / "overnight.toml")
    assert (cfg.lab.metric, cfg.lab.goal.value, cfg.lab.protected) == ("accuracy", "maximize", [])
    assert cfg.lab.run.endswith(" main.py") and cfg.lab.writable == []
    assert [k.name for k in cfg.knobs] == ["HIDDEN", "DROPOUT"]  # a seed is not a knob
    assert "accuracy" in (repo / "program.md").read_text()
    git(repo, "add", "-A")
    git(repo, "commit", "-qm", "overnight lab")
    ran = run_cli("run", str(repo), "--trials", "1", "--no-ui")
    assert ran.returncode == 0, ran.stdout + ran.stderr
    assert "trial    1 baseline     kept" in ran.stdout


def hand_run(repo: Path) -> list[tuple[str, float | None, float, str, str]]:
    """What a person running autoresearch by hand leaves behind: a branch of kept commits
    and a results.tsv row per experiment (the baseline first)."""

    def commit(message: str) -> str:
        git(repo, "commit", "-qam", message)
        return git(repo, "rev-parse", "HEAD").strip()

    def edit(old: str, new: str) -> None:
        train = repo / "train.py"
        train.write_text(train.read_text().replace(old, new, 1))

    # autoresearch's branch, from before overnight.toml was committed on master
    git(repo, "checkout", "-qb", "autoresearch/mar5", "HEAD~1")
    rows = []
    base = git(repo, "rev-parse", "HEAD").strip()
    rows.append((base, train_bpb(repo), 0.5, "keep", "baseline"))
    edit("NUM_STEPS = 120", "NUM_STEPS = 240")
    longer = commit("train twice as long")
    rows.append((longer, train_bpb(repo), 0.5, "keep", "train twice as long"))
    edit("LEARNING_RATE = 0.5", "LEARNING_RATE = 0.05")
    rows.append((commit("lr 0.05"), train_bpb(repo), 0.5, "discard", "lower learning rate"))
    git(repo, "reset", "-q", "--hard", longer)
    edit("BATCH_SIZE = 64", "BATCH_SIZE = 1e9")
    rows.append((commit("huge batch"), None, 0.0, "crash", "batch of 1e9 (crashed)"))
    git(repo, "reset", "-q", "--hard", longer)
    git(repo, "checkout", "-q", "master")
    lines = ["commit\tval_bpb\tmemory_gb\tstatus\tdescription"]
    for sha, bpb, mem, status, text in rows:
        lines.append(f"{sha[:7]}\t{bpb or 0:.6f}\t{mem:.1f}\t{status}\t{text}")
    (repo / "results.tsv").write_text("\n".join(lines) + "\n")
    return rows


@pytest.fixture
def adopted(fork: tuple[Path, dict[str, str]]) -> tuple[Path, dict[str, str]]:
    """A fork with overnight.toml committed on master, before any run of overnight."""
    repo, env = fork
    assert run_cli("init", str(repo), env=env).returncode == 0
    git(repo, "add", "overnight.toml")
    git(repo, "commit", "-qm", "overnight lab")
    return repo, env


def test_import_continues_a_hand_run_history_from_its_last_kept_commit(
    adopted: tuple[Path, dict[str, str]],
) -> None:
    repo, env = adopted
    rows = hand_run(repo)
    last_kept = rows[1][0]

    result = run_cli("import", str(repo / "results.tsv"), str(repo), env=env)
    assert result.returncode == 0, result.stderr
    assert "imported 4 trial(s)" in result.stdout and "keep 2, discard 1, crash 1" in result.stdout
    assert f"the run starts from {last_kept[:10]}, the last kept commit (line 3" in result.stdout
    status = json.loads(run_cli("status", str(repo), "--json").stdout)
    assert status["base_commit"] == last_kept
    assert status["imported"]["trials"] == 4 and status["imported"]["baseline"] == rows[0][1]

    ran = run_cli("run", str(repo), "--trials", "1", "--no-ui", env=env)
    assert ran.returncode == 0, ran.stdout + ran.stderr
    shown = run_cli("status", str(repo), env=env)
    assert shown.returncode == 0, shown.stdout + shown.stderr
    assert "imported: 4 trial(s) from " in shown.stdout and "best val_bpb: " in shown.stdout
    df = read_like_autoresearch(run_cli("ledger", str(repo), "--tsv").stdout)
    # the history first, as it was kept: the analysis's baseline is the person's baseline
    for i, (sha, bpb, mem, status_word, text) in enumerate(rows):
        row = df.iloc[i]
        assert (row["commit"], row["status"], row["description"]) == (
            sha[:7], status_word.upper(), text,
        )  # fmt: skip
        assert row["val_bpb"] == pytest.approx(bpb or 0.0, abs=1e-6)
        assert row["memory_gb"] == mem and row["agent"] == "imported"
    # then the night: the last kept commit measured again here, and the agents go on from it
    night = df.iloc[4]
    assert (night["agent"], night["commit"], night["status"]) == ("baseline", last_kept[:7], "KEEP")
    assert night["val_bpb"] == pytest.approx(rows[1][1], abs=1e-6)
    assert df.iloc[5]["parent"] == last_kept[:7]
    # the diff of an imported experiment is in the ledger (its commit is in the repository)
    store = open_store(store_url(repo))
    try:
        run = store.latest_run("fork")
        assert run is not None
        trials = store.trials(run.id)
        assert "NUM_STEPS = 240" in (trials[1].diff or "")
        # every agent reads the imported trials with the run's (here: the llm runtime's prompt)
        told = history(trials, trials[-1].number + 1, "someone", "val_bpb", Goal.minimize)
        assert "#3 imported discarded val_bpb=" in told and "lower learning rate" in told
    finally:
        store.close()
    notes = run_cli("notes", str(repo))  # the notebook CLI agents read
    assert notes.returncode == 0, notes.stderr
    assert "#3 imported discarded" in notes.stdout and "lower learning rate" in notes.stdout

    # resuming from elsewhere is refused; a new run from the branch is one flag away
    elsewhere = run_cli("run", str(repo), "--from", "master", "--trials", "1", "--no-ui", env=env)
    assert elsewhere.returncode == 2
    assert f"--new --from master {repo}" in elsewhere.stderr
    fresh = run_cli(
        "run", str(repo), "--new", "--from", "autoresearch/mar5", "--trials", "1", "--no-ui",
        env=env,
    )  # fmt: skip
    assert fresh.returncode == 0, fresh.stdout + fresh.stderr
    again = json.loads(run_cli("status", str(repo), "--json").stdout)
    assert again["run"] != status["run"] and again["base_commit"] == last_kept
    assert again["imported"] is None and again["baseline"] == pytest.approx(rows[1][1])

    # our own TSV imports too (its extra columns are ignored): a night carried over
    ours = repo / "ours.tsv"
    ours.write_text(run_cli("ledger", str(repo), "--tsv").stdout)
    carried = run_cli("import", str(ours), str(repo), env=env)
    assert carried.returncode == 0, carried.stderr
    assert "imported 2 trial(s)" in carried.stdout


def test_run_from_a_ref_that_does_not_exist_says_how_to_find_one(
    adopted: tuple[Path, dict[str, str]],
) -> None:
    repo, env = adopted
    result = run_cli("run", str(repo), "--new", "--from", "autoresearch/nope", "--no-ui", env=env)
    assert result.returncode == 2
    assert "no commit or branch 'autoresearch/nope'" in result.stderr
    assert "git branch -a" in result.stderr
    assert not (repo / ".overnight" / "overnight.db").exists()


HEADER = "commit\tval_bpb\tmemory_gb\tstatus\tdescription\n"
GOOD_ROW = "{base}\t1.611062\t0.5\tkeep\tbaseline\n"
BROKEN_TSV = {
    "comma-separated": ("commit,val_bpb,memory_gb,status,description\n", 1, "separate the columns with tabs"),
    "another metric": (HEADER.replace("val_bpb", "val_loss") + GOOD_ROW, 1, "its metric column is 'val_loss'"),
    "a column missing": (HEADER + GOOD_ROW + "abc1234\t1.0\tkeep\tx\n", 3, "has 4 columns; a row has five"),
    "a status of ours": (HEADER + GOOD_ROW.replace("keep", "kept"), 2, "status 'kept' is not keep, discard or crash"),
    "a metric that is no number": (HEADER + GOOD_ROW.replace("1.611062", "n/a"), 2, "val_bpb 'n/a' is not a number"),
    "memory that is no number": (HEADER + GOOD_ROW.replace("\t0.5\t", "\tlots\t"), 2, "memory_gb 'lots'"),
    "no commit hash": (HEADER + GOOD_ROW.replace("{base}", "HEAD~1"), 2, "'HEAD~1' is not a commit hash"),
    "a tab in a description": (HEADER + GOOD_ROW + "abc1234\t1.0\t0.5\tdiscard\ta\tb\n", 3, "has 6 columns and the header 5"),
    "nothing kept": (HEADER + GOOD_ROW.replace("keep", "crash"), 2, "no row with status keep"),
    "empty": ("", 1, "has no header"),
    "a last keep that is not here": (HEADER + GOOD_ROW + "deadbee\t1.5\t0.5\tkeep\tx\n", 3, "git fetch origin autoresearch/<tag>"),
}  # fmt: skip


@pytest.mark.parametrize("case", BROKEN_TSV.values(), ids=BROKEN_TSV.keys())
def test_a_malformed_results_tsv_is_refused_naming_its_line(
    adopted: tuple[Path, dict[str, str]], case: tuple[str, int, str]
) -> None:
    repo, env = adopted
    text, line, says = case
    path = repo / "results.tsv"
    path.write_text(text.replace("{base}", git(repo, "rev-parse", "--short=7", "HEAD").strip()))
    result = run_cli("import", str(path), str(repo), env=env)
    assert result.returncode == 2, result.stdout + result.stderr
    first, fix = result.stderr.splitlines()[:2]
    assert first.startswith(f"error: {path}:{line}: "), result.stderr
    assert fix.startswith("  fix: ") and says in result.stderr, result.stderr
    assert not (repo / ".overnight" / "overnight.db").exists()  # nothing was started


def test_importing_a_file_that_is_not_there(adopted: tuple[Path, dict[str, str]]) -> None:
    repo, env = adopted
    result = run_cli("import", str(repo / "nope.tsv"), str(repo), env=env)
    assert result.returncode == 2 and "no such file" in result.stderr


def test_imported_trials_are_final_and_never_a_ratchet(
    adopted: tuple[Path, dict[str, str]],
) -> None:
    """An imported keep better than anything measured here is history, not a bar: the
    agents' ratchet and the lab's best come from this machine's measurements."""
    repo, env = adopted
    base = git(repo, "rev-parse", "--short=7", "HEAD").strip()
    (repo / "results.tsv").write_text(HEADER + f"{base}\t0.000100\t0.5\tkeep\ttoo good\n")
    assert run_cli("import", str(repo / "results.tsv"), str(repo), env=env).returncode == 0
    ran = run_cli("run", str(repo), "--trials", "1", "--no-ui", env=env)
    assert ran.returncode == 0, ran.stderr
    status = json.loads(run_cli("status", str(repo), "--json").stdout)
    assert status["imported"]["best"]["metric"] == 0.0001
    assert status["best"]["agent"] != "imported" and status["best"]["metric"] > 1.0
    store = open_store(store_url(repo))
    try:
        run = store.latest_run("fork")
        assert run is not None
        statuses = {t.agent: t.status for t in store.trials(run.id)}
        assert statuses["imported"] is TrialStatus.kept
        assert all(a.best_metric and a.best_metric > 1.0 for a in store.agents(run.id))
        # the command center says the same: the history is on the ledger, not the best
        sources = Sources(store=store, run=run, config=load_org(repo).config, root=repo,
                          state_dir=repo / ".overnight")  # fmt: skip
        center = CommandCenter(sources, Access.for_lab(repo))
        with serving(center) as served, httpx.Client(base_url=served.base, timeout=30) as client:
            client.get(f"/?token={served.url.split('token=')[1]}")
            best = client.get("/lab/best").text
            imported = client.get("/trials/1").text
    finally:
        store.close()
    assert f"· trial {status['best']['trial']} · {status['best']['agent']} ·" in best
    assert "0.0001" not in best
    assert "<dt>agent</dt><dd>imported</dd>" in imported and "too good" in imported
