"""Fixtures of the gateway's tests: a lab whose agent has a budget, a throwaway certificate
authority (the gateway harness itself is tests/helpers/gateway.py)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
import trustme

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


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    """A certificate authority of the test module's own, for upstreams serving HTTPS."""
    return trustme.CA()


@pytest.fixture
def ca_file(ca: trustme.CA, tmp_path: Path) -> str:
    """The authority's certificate, in a PEM file."""
    path = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(path))
    return str(path)
