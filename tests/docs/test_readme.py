"""The README stays true: its configuration examples parse, its commands exist."""

from __future__ import annotations

import re
from pathlib import Path

from overnight.org import parse_config
from tests.helpers import REPO
from tests.helpers.processes import run_cli

README = (REPO / "README.md").read_text()
LAB = '[lab]\nname = "x"\neditable = ["a.py"]\nrun = "python a.py"\nmetric = "m"\n'


def test_every_toml_example_is_valid_org_code() -> None:
    blocks = re.findall(r"```toml\n(.*?)```", README, re.S)
    assert blocks
    for block in blocks:
        text = block if "[lab]" in block else LAB + block
        parse_config(text, Path("README.md"))


def test_every_documented_command_exists() -> None:
    documented = set(re.findall(r"`overnight ([a-z][a-z-]+)", README))
    listed = run_cli("--help").stdout
    missing = [c for c in documented if c not in listed]
    assert not missing, f"README mentions commands the CLI lacks: {missing}"
