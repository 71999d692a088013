"""The real agent CLIs the tests drive: Claude Code and Codex (`make clis` installs them
into build/clis; OVERNIGHT_CLIS names another folder), and aider (build/aider)."""

from __future__ import annotations

import os
import platform
import sys
from pathlib import Path

import pytest

from tests.helpers import REPO


def _cli(relative: str) -> Path:
    folder = Path(os.environ.get("OVERNIGHT_CLIS") or REPO / "build" / "clis")
    path = folder / relative
    if not (path.is_file() and os.access(path, os.X_OK)):
        pytest.fail(
            f"{path} is missing: run `make clis` (it installs the real Claude Code and Codex "
            "CLIs into build/clis; OVERNIGHT_CLIS may name another folder)",
            pytrace=False,
        )
    return path


def claude_cli() -> Path:
    # npm 11 skips the package's postinstall, so run the platform package's binary itself.
    machine = platform.machine().lower()
    arch = {"x86_64": "x64", "amd64": "x64", "aarch64": "arm64"}.get(machine, machine)
    return _cli(f"node_modules/@anthropic-ai/claude-code-{sys.platform}-{arch}/claude")


def codex_cli() -> Path:
    return _cli("node_modules/.bin/codex")


def aider_cli() -> Path:
    path = Path(os.environ.get("OVERNIGHT_AIDER") or REPO / "build" / "aider" / "bin" / "aider")
    if not path.is_file():
        pytest.fail(f"{path} is missing: run `make clis` (it installs aider-chat)", pytrace=False)
    return path
