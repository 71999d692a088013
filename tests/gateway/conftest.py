"""Fixtures of the gateway's tests (the gateway harness itself is tests/helpers/gateway.py)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from tests.helpers.labs import make_lab


@pytest.fixture
def coder_lab(tmp_path: Path) -> Callable[[str, float], Path]:
    """Makes the toy lab with its optuna tuner and a `coder` agent on a budget (in USD),
    whose gateway routes `smart` to an Anthropic upstream at a URL, its key in
    FAKE_ANTHROPIC_KEY."""

    def make(url: str, budget: float) -> Path:
        upstream = {
            "name": "primary",
            "protocol": "anthropic",
            "base_url": url,
            "credentials": [{"name": "main", "env": "FAKE_ANTHROPIC_KEY"}],
        }
        return make_lab(
            tmp_path / "lab",
            agents=[{"name": "t"}, {"name": "coder", "budget": budget}],
            gateway={
                "port": 0,
                "upstreams": [upstream],
                "models": {"smart": ["primary/claude-fake"]},
                "prices": {"claude-fake": {"input": 10.0, "output": 10.0}},
            },
        )

    return make
