"""The integrity guard's globs, git's view of a change, and knob rewriting, on real files."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from overnight import globs
from overnight.errors import ConfigError
from overnight.lab import integrity
from overnight.lab.git import Git, blob_hash
from overnight.org import knobs
from overnight.org.config import KnobConfig
from tests.helpers.labs import git


@pytest.mark.parametrize(
    ("path", "glob", "hit"),
    [
        ("train.py", "train.py", True),
        ("train.py", "*.py", True),
        ("src/train.py", "*.py", False),  # `*` stays within a folder
        ("src/train.py", "**/*.py", True),
        ("train.py", "**/*.py", True),
        ("src/a/b.py", "src/**", True),
        ("src/a/b.py", "src", True),  # a folder covers what is below it
        ("srcx/a.py", "src", False),
        ("data/x.csv", "data/*.csv", True),
        ("data/x.csv", "data/?.csv", True),
        ("a.py", "[ab].py", True),
        ("c.py", "[ab].py", False),
    ],
)
def test_globs(path: str, glob: str, hit: bool) -> None:
    assert globs.matches(path, [glob]) is hit


def test_diff_names_every_touched_path_even_odd_ones(tmp_path: Path) -> None:
    repo = tmp_path / "r"
    repo.mkdir()
    git(repo, "init", "-q")
    names = ["plain.py", "with space.py", "ünïcode.py", "tab\there.py", 'quote".py']
    for name in names:
        (repo / name).write_text("a\n")
    git(repo, "add", "-A")
    git(repo, "commit", "-qm", "one")
    g = Git(repo)
    before = g.head()
    for name in names:
        (repo / name).write_text("b\n")
    (repo / "plain.py").rename(repo / "moved.py")
    after = g.commit_all("two")
    patch, paths = g.diff(before, after)
    assert sorted(paths) == sorted([*names, "moved.py"])
    assert "+b" in patch
    assert g.tracked_files(after)["moved.py"] == blob_hash(b"b\n")


def test_protected_hash_check(tmp_path: Path) -> None:
    (tmp_path / "judge.py").write_text("fair\n")
    recorded = integrity.hash_files(tmp_path, ["judge.py"])
    assert integrity.check_protected(tmp_path, recorded) is None
    (tmp_path / "judge.py").write_text("rigged\n")
    assert "judge.py" in str(integrity.check_protected(tmp_path, recorded))
    (tmp_path / "judge.py").unlink()
    assert "judge.py" in str(integrity.check_protected(tmp_path, recorded))


SOURCE = """\
import os
LR = 0.001  # learning rate
HIDDEN: int = 16
ACT = "tanh"
def f():
    LR = 5  # not top level: never touched
"""


def test_knobs_rewrite_only_the_top_level_assignment() -> None:
    out = knobs.set_values(SOURCE, {"LR": 0.0123, "HIDDEN": 64, "ACT": "relu"})
    assert "LR = 0.0123  # learning rate" in out
    assert "HIDDEN: int = 64" in out
    assert 'ACT = "relu"' in out
    assert "    LR = 5  # not top level" in out
    assert knobs.read_value(out, "LR") == 0.0123
    with pytest.raises(KeyError):
        knobs.set_values(SOURCE, {"MISSING": 1})


@given(
    st.one_of(
        st.floats(allow_nan=False, allow_infinity=False), st.integers(), st.text(), st.booleans()
    )
)
def test_any_knob_value_reads_back(value: object) -> None:
    out = knobs.set_values(SOURCE, {"ACT": value})
    read = knobs.read_value(out, "ACT")
    if isinstance(value, float):
        assert read == pytest.approx(value, rel=1e-5)
    else:
        assert read == value


def test_knob_validation_names_the_problem(tmp_path: Path) -> None:
    (tmp_path / "t.py").write_text("LR = 1\nLR = 2\n")
    config = tmp_path / "overnight.toml"
    twice = KnobConfig(name="LR", file="t.py", low=0, high=1)
    with pytest.raises(ConfigError, match=r"2 top-level assignments in t.py \(lines 1, 2\)"):
        knobs.validate(tmp_path, [twice], config)
    with pytest.raises(ConfigError, match="does not exist"):
        knobs.validate(tmp_path, [KnobConfig(name="LR", file="nope.py", low=0, high=1)], config)
