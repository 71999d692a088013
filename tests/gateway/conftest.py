"""Fixtures of the gateway's tests (the gateway harness itself is tests/helpers/gateway.py)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from tests.helpers.labs import git, make_lab

GATEWAY = """
[[agents]]
name = "coder"
budget = {budget}

[gateway]
port = 0

[[gateway.upstreams]]
name = "primary"
protocol = "anthropic"
base_url = "{url}"
credentials = [{{ name = "main", env = "FAKE_ANTHROPIC_KEY" }}]

[gateway.models]
smart = ["primary/claude-fake"]

[gateway.prices.claude-fake]
input = 10.0
output = 10.0
"""


@pytest.fixture
def coder_lab(tmp_path: Path) -> Callable[[str, float], Path]:
    """Makes the toy lab with its optuna tuner and a `coder` agent on a budget, whose gateway
    routes `smart` to an Anthropic upstream at a URL."""

    def make(url: str, budget: float) -> Path:
        lab = make_lab(tmp_path / "lab")
        config = lab / "overnight.toml"
        text = config.read_text()
        # the gateway lab keeps the optuna tuner and adds a coder agent with a budget
        text = text.replace('[[agents]]\nname = "t"\ncount = 1\n', '[[agents]]\nname = "t"\n')
        config.write_text(text + GATEWAY.format(url=url, budget=budget))
        git(lab, "commit", "-qam", "gateway")
        return lab

    return make
