"""The read-only commands after a bad edit of overnight.toml was committed: through the CLI,
on a lab that ran.

`ledger`, `status`, `report`, `audit verify`, `audit export` and `approvals` read the
store anyway (the lab as its run recorded it), after one warning naming the config's
file, line and field; nothing they show changes.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from overnight.governance.approvals import Approvals
from overnight.store import open_store, store_url
from tests.helpers.labs import git, make_lab
from tests.helpers.processes import run_cli

GOOD = 'budget = "20s"'
BROKEN = [
    pytest.param('budget = "abc"', ["lab.budget", "'abc' is not a duration"], id="a bad value"),
    pytest.param('budget = "abc', ["not valid TOML"], id="not even TOML"),
]


def reads(lab: Path, out: Path) -> dict[str, list[str]]:
    """Every read-only command, as the user types it."""
    return {
        "ledger": ["ledger", str(lab)],
        "ledger --tsv": ["ledger", str(lab), "--tsv"],
        "status": ["status", str(lab)],
        "status --json": ["status", str(lab), "--json"],
        "report": ["report", str(lab), "--out", str(out)],
        "audit verify": ["audit", "verify", str(lab)],
        "audit export": ["audit", "export", str(lab), "--jsonl"],
        "approvals": ["approvals", str(lab)],
    }


def commit_config(lab: Path, budget_line: str) -> None:
    path = lab / "overnight.toml"
    text = path.read_text()
    line = next(x for x in text.splitlines() if x.startswith("budget ="))
    path.write_text(text.replace(line, budget_line))
    git(lab, "commit", "-qam", f"config: {budget_line}")


@pytest.fixture(scope="module")
def ran(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, dict[str, str]]]:
    """A lab that ran three trials, with an approval waiting, and what each read-only
    command printed while its config was good."""
    tmp = tmp_path_factory.mktemp("ledger")
    lab = make_lab(tmp / "lab", lab={"parallel": 2}, agents=[{"name": "t", "count": 2}])
    result = run_cli("run", str(lab), "--trials", "3", "--no-ui")
    assert result.returncode == 0, result.stderr
    store = open_store(store_url(lab))
    try:
        run = store.latest_run("toy")
        assert run is not None
        Approvals(store, "toy").request(
            run.id, "t-1", {"kind": "shell", "command": "pip install requests", "agent": "t-1"},
            "network installs need a person", risk=0.62, timeout=3600,
        )  # fmt: skip
    finally:
        store.close()
    before = {}
    for name, args in reads(lab, tmp / "before" / "report.md").items():
        result = run_cli(*args)
        assert result.returncode == 0 and not result.stderr, (name, result.stderr)
        before[name] = result.stdout
    before["report"] = (tmp / "before" / "report.md").read_text()
    yield lab, before
    commit_config(lab, GOOD)


@pytest.mark.parametrize(("line", "names"), BROKEN)
def test_every_read_only_command_reads_the_store_despite_a_bad_config(
    ran: tuple[Path, dict[str, str]], tmp_path: Path, line: str, names: list[str]
) -> None:
    lab, before = ran
    commit_config(lab, line)
    config = lab / "overnight.toml"
    for name, args in reads(lab, tmp_path / "report.md").items():
        result = run_cli(*args)
        assert result.returncode == 0, (name, result.stderr)
        # one warning, naming the file, the line and what is wrong, and what is shown
        assert result.stderr.count("warning:") == 1, (name, result.stderr)
        assert f"{config}:7:" in result.stderr, (name, result.stderr)
        for word in names:
            assert word in result.stderr, (name, result.stderr)
        assert "showing what the store holds for lab 'toy'" in result.stderr
        shown = (tmp_path / "report.md").read_text() if name == "report" else result.stdout
        if name == "status --json":
            now, then = json.loads(shown), json.loads(before[name])
            assert now.pop("config_error").startswith(f"{config}:7:")
            then.pop("config_error")
            assert now == then
        elif name == "status":  # (it says how long ago things happened)
            assert shown.splitlines()[0] == before[name].splitlines()[0]
        elif name == "approvals":  # (so do these)
            assert shown.split()[0] == before[name].split()[0]  # the approval's id
            assert "pip install requests" in shown
        else:
            assert shown == before[name], name  # nothing lost, nothing changed
    status = json.loads(run_cli("status", str(lab), "--json").stdout)
    assert (status["lab"], status["metric"], status["goal"]) == ("toy", "score", "minimize")
    assert status["best"]["metric"] <= status["baseline"]


def test_without_a_run_to_show_the_config_error_is_the_answer(tmp_path: Path) -> None:
    lab = make_lab(tmp_path / "lab")
    commit_config(lab, 'budget = "abc"')
    for args in (["status", str(lab)], ["ledger", str(lab)], ["audit", "verify", str(lab)]):
        result = run_cli(*args)
        assert result.returncode == 2, result.stderr
        assert f"{lab / 'overnight.toml'}:7: lab.budget:" in result.stderr
        assert "warning:" not in result.stderr
    assert not (lab / ".overnight").exists()  # a command that only reads made no store


def test_in_a_store_of_several_labs_the_raw_lab_name_says_which(tmp_path: Path) -> None:
    lab = make_lab(tmp_path / "lab")
    assert run_cli("run", str(lab), "--trials", "1", "--no-ui").returncode == 0
    store = open_store(store_url(lab))
    try:  # another lab's run in the same database, as a shared OVERNIGHT_DB holds
        store.create_run("20260101-000000", "other", "0" * 40, {}, {})
    finally:
        store.close()
    commit_config(lab, 'budget = "abc"')
    result = run_cli("ledger", str(lab), "--tsv")
    assert result.returncode == 0 and "lab 'toy'" in result.stderr
    assert result.stdout.startswith("commit\tscore\t")
    # not even TOML: no name to go by, so the store cannot tell which lab this is
    commit_config(lab, 'budget = "abc')
    result = run_cli("ledger", str(lab), "--tsv")
    assert result.returncode == 2 and "not valid TOML" in result.stderr
    assert result.stdout == ""
