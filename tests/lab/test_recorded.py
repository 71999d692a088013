"""What a trial records besides its metric, through `overnight run` on real labs: `[lab]
record` values (ledger, TSV, web trial view, report), `constraints` that discard a trial
saying why, and memory_gb: a printed peak_vram_mb, else the peak RSS the runner measured."""

from __future__ import annotations

import html
import io
from pathlib import Path

import httpx
import pandas as pd

from overnight.org import load_org
from overnight.store import open_store, store_url
from overnight.web import Access, CommandCenter, Sources, serving
from tests.helpers.labs import git, make_lab
from tests.helpers.processes import run_cli

# A toy whose memory (as a GPU run would print it) grows with Y, and which also prints a
# throughput figure and a line the lab does not record.
SCRIPT = """\
X = 0.5
Y = 5
print(f"score: {(X - 3) ** 2 + (Y - 1) ** 2}")
print(f"peak_vram_mb: {1000 + 100 * Y:.1f}")
print("tok_per_s: 1234.5")
print("unrecorded: 7")
"""


def tsv(lab: Path) -> pd.DataFrame:
    result = run_cli("ledger", str(lab), "--tsv")
    assert result.returncode == 0, result.stderr
    return pd.read_csv(io.StringIO(result.stdout), sep="\t")


def test_recorded_values_reach_the_ledger_the_web_page_and_the_report(tmp_path: Path) -> None:
    # the unchanged code scores worst of all, so the first trial is a keep (and in the report)
    worst_first = SCRIPT.replace("(Y - 1) ** 2}", "(Y - 1) ** 2 + 100 * (X == 0.5)}")
    lab = make_lab(
        tmp_path / "lab",
        script=worst_first,
        lab={"record": ["peak_vram_mb", "tok_per_s"]},
    )
    ran = run_cli("run", str(lab), "--trials", "2", "--no-ui")
    assert ran.returncode == 0, ran.stdout + ran.stderr
    df = tsv(lab)
    assert list(df.columns[:5]) == ["commit", "score", "memory_gb", "status", "description"]
    assert list(df.columns[-2:]) == ["peak_vram_mb", "tok_per_s"]  # after ours
    assert "unrecorded" not in df.columns
    baseline = df.iloc[0]
    assert (baseline["peak_vram_mb"], baseline["tok_per_s"]) == (1500.0, 1234.5)
    assert baseline["memory_gb"] == round(1500 / 1024, 1)
    assert (df["memory_gb"] == (df["peak_vram_mb"] / 1024).round(1)).all()

    shown = run_cli("ledger", str(lab))
    assert shown.returncode == 0
    head = shown.stdout.splitlines()[0].split()
    assert head[:7] == [
        "trial",
        "agent",
        "status",
        "score",
        "memory_gb",
        "peak_vram_mb",
        "tok_per_s",
    ]
    assert "1500" in shown.stdout.splitlines()[1]

    report = tmp_path / "report.md"
    assert run_cli("report", str(lab), "--out", str(report)).returncode == 0
    assert (
        "| trial | agent | score | delta | memory_gb | peak_vram_mb | tok_per_s | change |"
        in report.read_text()
    )

    page = _page(lab, tmp_path, "/trials/1")  # the command center's trial view
    assert "<dt>memory</dt><dd>1.5 GB (peak VRAM)</dd>" in page
    assert "<dt>peak_vram_mb</dt><dd>1500</dd>" in page and "<dt>tok_per_s</dt>" in page


def test_a_trial_that_breaks_a_constraint_is_discarded_saying_which(tmp_path: Path) -> None:
    # the unchanged code already breaks it: the baseline stays (every agent starts there),
    # and no trial is kept unless it keeps the bound, however good its score
    lab = make_lab(
        tmp_path / "lab",
        script=SCRIPT.replace("1000 + 100 * Y", "2000 + 0 * Y"),
        lab={
            "record": ["peak_vram_mb"],
            "constraints": ["peak_vram_mb <= 1900", "memory_gb < 64"],
        },
    )
    ran = run_cli("run", str(lab), "--trials", "2", "--no-ui")
    assert ran.returncode == 0, ran.stdout + ran.stderr
    assert "kept anyway: the baseline is where every agent starts" in ran.stdout
    df = tsv(lab)
    assert list(df["outcome"]) == ["kept", "discarded", "discarded"]
    reason = "constraint peak_vram_mb <= 1900 broken: peak_vram_mb = 2000"
    assert df.iloc[0]["reason"].startswith(reason)
    assert (df.iloc[1:]["reason"] == reason).all()
    shown = run_cli("ledger", str(lab)).stdout
    assert shown.count(reason) == 3
    report = tmp_path / "report.md"
    assert run_cli("report", str(lab), "--out", str(report)).returncode == 0
    assert "## Trials that broke a constraint" in report.read_text()
    # the command center's ledger says why too (a plain discard's reason it leaves out)
    assert html.escape(reason) in _page(lab, tmp_path, "/lab/ledger")


def _page(lab: Path, tmp_path: Path, path: str) -> str:
    """A page of the command center over the lab's store, fetched over HTTP."""
    store = open_store(store_url(lab))
    try:
        run = store.latest_run("toy")
        assert run is not None
        sources = Sources(
            store=store, run=run, config=load_org(lab).config, root=lab, state_dir=tmp_path
        )
        center = CommandCenter(sources, Access.for_lab(lab))
        with serving(center) as served, httpx.Client(base_url=served.base, timeout=30) as client:
            client.get(f"/?token={served.url.split('token=')[1]}")
            return client.get(path).text
    finally:
        store.close()


def test_a_constraint_on_a_value_the_run_does_not_print_discards_it(tmp_path: Path) -> None:
    lab = make_lab(
        tmp_path / "lab",
        lab={"record": ["loss_spikes"], "constraints": ["loss_spikes < 3"]},
    )
    assert run_cli("run", str(lab), "--trials", "1", "--no-ui").returncode == 0
    df = tsv(lab)
    assert df.iloc[1]["reason"] == (
        "constraint loss_spikes < 3: the run printed no `loss_spikes: <number>` line"
    )
    assert df["loss_spikes"].isna().all()


# Holds 150 MB while a child holds 120 MB more, for a moment, and prints no memory line.
HUNGRY = """\
import subprocess, sys
X = 0.5
Y = 5
held = b"x" * (150 * 2**20)
child = "import time; held = b'y' * (120 * 2**20); time.sleep(1.5)"
subprocess.run([sys.executable, "-c", child], check=True)
print(f"score: {(X - 3) ** 2 + (Y - 1) ** 2}")
"""


def test_without_a_printed_peak_vram_memory_is_the_peak_rss_of_the_process_tree(
    tmp_path: Path,
) -> None:
    lab = make_lab(tmp_path / "lab", script=HUNGRY)
    assert run_cli("run", str(lab), "--trials", "1", "--no-ui").returncode == 0
    baseline = tsv(lab).iloc[0]
    # both processes at once (a data loader's workers are like the child), not the biggest
    assert 0.26 <= baseline["memory_gb"] < 1.0, baseline["memory_gb"]
    store = open_store(store_url(lab))
    try:
        run = store.latest_run("toy")
        assert run is not None
        first = store.trials(run.id)[0]
        assert first.peak_rss_mb is not None and first.peak_rss_mb >= 270
        assert first.recorded == {}
    finally:
        store.close()


def test_a_run_goes_on_when_values_are_recorded_and_not_when_a_bound_is_added(
    tmp_path: Path,
) -> None:
    lab = make_lab(tmp_path / "lab", script=SCRIPT)
    assert run_cli("run", str(lab), "--trials", "1", "--no-ui").returncode == 0
    path = lab / "overnight.toml"
    path.write_text(
        path.read_text().replace('grace = "5s"', 'grace = "5s"\nrecord = ["tok_per_s"]')
    )
    git(lab, "commit", "-qam", "record throughput")
    resumed = run_cli("run", str(lab), "--trials", "1", "--no-ui")
    assert resumed.returncode == 0 and "resuming run" in resumed.stdout, resumed.stderr
    assert tsv(lab)["tok_per_s"].iloc[-1] == 1234.5
    # a bound changes which trials are kept: the run's trials would not be comparable
    path.write_text(
        path.read_text().replace("record = [", 'constraints = ["score < 9"]\nrecord = [')
    )
    git(lab, "commit", "-qam", "bound the score")
    refused = run_cli("run", str(lab), "--trials", "1", "--no-ui")
    assert refused.returncode == 2 and "lab.constraints" in refused.stderr
    assert "overnight run --new" in refused.stderr
