"""One lab's enclosure for what it runs but does not trust: experiments, the holdout,
agents' CLIs.

Owns what `sandbox` needs to know of a lab: which environment such a process gets
(`[lab] env`, never a variable a gateway credential is read from), what it must not
see (the lab's state, credential files, the hidden holdout files), what it must still
see (the lab, Python, the programs its commands name), whether bubblewrap walls it in
at all (`[lab] sandbox`), and the secrets to redact from whatever it prints. Knows
nothing about trials, the store or agents.
"""

from __future__ import annotations

import contextlib
import functools
import os
import shlex
import shutil
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from overnight import redaction
from overnight.lab import holdout, sandbox
from overnight.org import Org, OrgConfig
from overnight.paths import StateDir


class Enclosure:
    """What one lab's untrusted processes get; registers the lab's secrets for redaction."""

    def __init__(self, org: Org, state: StateDir) -> None:
        self.org = org
        self.config = org.config
        self.state = state
        _register_secrets(self.config, state)

    @functools.cached_property
    def sandboxed(self) -> bool:
        """Whether experiments and agents' CLIs run in bubblewrap (see `lab.sandbox`)."""
        return self.config.lab.sandbox != "none" and sandbox.bwrap_problem() is None

    def env(self, extra: Mapping[str, str]) -> dict[str, str]:
        """The environment of an experiment or an agent's CLI: the allowlist, `[lab] env`,
        then `extra`; never a variable a gateway credential is read from."""
        envs, _files = credential_sources(self.config)
        return sandbox.environment(os.environ, self.config.lab.env, never=envs, extra=extra)

    def hidden_paths(self) -> tuple[Path, ...]:
        _envs, files = credential_sources(self.config)
        found = holdout.paths_to_hide(self.org.root, self.config.lab.hidden)
        return (*sandbox.hidden_paths(self.state.path, files), *found)

    def wrap(self, worktree: Path, seconds: float) -> list[str]:
        """What an experiment's shell runs inside: the sandbox, which dies with us, or
        else the watchdog that enforces `seconds` should we die first."""
        lab = self.config.lab
        if not self.sandboxed:
            return sandbox.watchdog(seconds)
        walls = sandbox.Walls(
            cwd=worktree,
            writable=(worktree, *(Path(p).expanduser() for p in lab.writable)),
            hidden=self.hidden_paths(),
            visible=(self.org.root, Path(sys.prefix), *self._command_homes()),
            network=lab.network,
        )
        return walls.argv()

    def walls_abroad(self) -> dict[str, Any] | None:
        """The sandbox an experiment on a cluster's node gets, as plain data (`writable`,
        `hidden`, `visible`, `network`; the node adds its checkout), where bwrap works
        there; None: the watchdog alone, as where no sandbox runs here."""
        lab = self.config.lab
        if lab.sandbox == "none":
            return None
        return {
            "writable": list(lab.writable),
            "hidden": [str(p) for p in self.hidden_paths()],
            "visible": [str(p) for p in (self.org.root, *self._command_homes())],
            "network": lab.network,
        }

    def _command_homes(self) -> list[Path]:
        """Where the lab's commands' programs live (a venv's folder for `venv/bin/python`),
        shown again in the sandbox should they be under the /tmp it replaces."""
        lab, homes = self.config.lab, list[Path]()
        for command in (lab.run, lab.evaluate, lab.holdout):
            try:
                words = shlex.split(command or "")
            except ValueError:
                continue
            found = shutil.which(words[0]) if words else None
            if found:
                homes += sandbox.homes_of(Path(found))
        return homes


def credential_sources(config: OrgConfig) -> tuple[list[str], list[str]]:
    """The environment variables and files the gateway's credentials are read from."""
    gateway = config.gateway
    creds = [c for u in gateway.upstreams for c in u.credentials] if gateway else []
    return [c.env for c in creds if c.env], [c.file for c in creds if c.file]


def _register_secrets(config: OrgConfig, state: StateDir) -> None:
    """Every secret this lab's processes may come across, for `redaction.redact`."""
    envs, files = credential_sources(config)
    redaction.register(*(os.environ.get(name) for name in envs))
    # an unreadable one is the gateway's to report when it starts, naming the credential
    paths = [Path(name).expanduser() for name in files]
    keys = state.keys
    if keys.is_dir():
        paths += keys.iterdir()
    for path in paths:
        with contextlib.suppress(OSError, UnicodeDecodeError):
            redaction.register(path.read_text(encoding="utf-8"))
    redaction.register_url_password(os.environ.get("OVERNIGHT_DB"))
