"""Org code: parsing overnight.toml, `overnight init`, `overnight example`."""

from __future__ import annotations

from pathlib import Path

import pytest

from overnight.errors import ConfigError
from overnight.org import parse_config
from overnight.units import parse_duration, parse_size
from tests.helpers.labs import git
from tests.helpers.processes import run_cli

MINIMAL = """\
[lab]
name = "x"
editable = ["train.py"]
run = "python train.py"
metric = "val_loss"
"""


def test_minimal_config_gets_sensible_defaults() -> None:
    cfg = parse_config(MINIMAL, Path("overnight.toml"))
    assert cfg.lab.goal.value == "minimize"
    assert cfg.lab.budget == 300 and cfg.lab.grace == 60
    assert cfg.agent_names()[0][0] == "tuner"


def test_agent_count_expands_into_named_agents() -> None:
    cfg = parse_config(MINIMAL + '[[agents]]\nname = "a"\ncount = 3\n', Path("o.toml"))
    assert [name for name, _ in cfg.agent_names()] == ["a-1", "a-2", "a-3"]


@pytest.mark.parametrize(
    ("extra", "field", "words"),
    [
        (
            '[[knobs]]\nname = "LR"\nfile = "train.py"\nlow = 1\nhigh = 0.1\n',
            "knobs[0]",
            "is not below high",
        ),
        (
            '[[knobs]]\nname = "LR"\nfile = "train.py"\nlow = 0\nhigh = 1\nlog = true\n',
            "knobs[0]",
            "log-scaled",
        ),
        (
            '[[knobs]]\nname = "LR"\nfile = "train.py"\nchoices = [1]\nlow = 1\n',
            "knobs[0]",
            "has both a range (low/high) and choices",
        ),
        ('[[agents]]\nname = "a"\nautonomy = "yolo"\n', "agents[0].autonomy", "curious"),
        ('[[agents]]\nname = "a"\n[[agents]]\nname = "a"\n', "agents[1].name", "used twice"),
    ],
)
def test_invalid_configs_name_the_field(extra: str, field: str, words: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_config(MINIMAL + extra, Path("overnight.toml"))
    assert field in str(info.value) and words in str(info.value)
    assert "overnight.toml" in str(info.value)


def test_durations_and_sizes() -> None:
    assert parse_duration("1h30m") == 5400
    assert parse_duration("90s") == 90
    assert parse_duration(2) == 2
    assert parse_size("50MB") == 50_000_000
    assert parse_size("1GiB") == 2**30
    for bad in ("soon", "5 minutes", ""):
        with pytest.raises(ValueError):
            parse_duration(bad)


def test_init_drafts_a_config_that_loads(tmp_path: Path) -> None:
    repo = tmp_path / "my lab"
    repo.mkdir()
    git(repo, "init", "-q")
    (repo / "train.py").write_text('LR = 0.1\nprint(f"val_loss: {LR}")\n')
    (repo / "prepare.py").write_text("DATA = 1\n")
    result = run_cli("init", str(repo))
    assert result.returncode == 0, result.stderr
    cfg = parse_config((repo / "overnight.toml").read_text(), repo / "overnight.toml")
    assert cfg.lab.editable == ["train.py"]
    assert cfg.lab.protected == ["prepare.py"]
    assert cfg.lab.metric == "val_loss" and cfg.lab.goal.value == "minimize"
    assert cfg.lab.name == "my-lab"
    assert "val_loss" in (repo / "program.md").read_text()
    again = run_cli("init", str(repo))
    assert again.returncode == 2 and "--force" in again.stderr


def test_init_outside_a_repo_says_what_to_do(tmp_path: Path) -> None:
    result = run_cli("init", str(tmp_path))
    assert result.returncode == 2 and "git init" in result.stderr


def test_example_list_and_copy(tmp_path: Path) -> None:
    listing = run_cli("example", "list")
    assert listing.returncode == 0 and "spirals" in listing.stdout
    dest = tmp_path / "demo"
    made = run_cli("example", "spirals", str(dest))
    assert made.returncode == 0, made.stderr
    assert git(dest, "status", "--porcelain") == ""
    assert git(dest, "log", "--oneline").count("\n") == 1
    parse_config((dest / "overnight.toml").read_text(), dest / "overnight.toml")
    clash = run_cli("example", "spirals", str(dest))
    assert clash.returncode == 2 and "not empty" in clash.stderr
    unknown = run_cli("example", "nope", str(tmp_path / "x"))
    assert unknown.returncode == 2 and "spirals" in unknown.stderr
