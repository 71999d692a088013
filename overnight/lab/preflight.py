"""A lab's preflight: everything checked when it starts, so nothing fails at 3 a.m.

Owns the checks of org code against the repository and this machine: a clean
working tree, globs that match committed files, knobs that can be rewritten,
commands that exist, agents whose runtime and model route are known, GPUs, the
sandbox, and a base commit for `--from`. What only other packages know (which
runtimes are installed, whether the policy loads) it asks through `StartChecks`,
which the caller wires in (`overnight.wiring`): the lab never imports the agents
or governance. Knows nothing about the store or how trials run.
"""

from __future__ import annotations

import os
import shlex
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Protocol

from overnight import globs
from overnight.errors import ConfigError, RepoError, UserError
from overnight.lab import holdout, sandbox
from overnight.lab.executor import visible_gpus
from overnight.lab.git import Git
from overnight.org import CONFIG_FILE, Org, knobs
from overnight.org.config import overlap_fix
from overnight.org.load import line_of


class RuntimeFacts(Protocol):
    """What a lab's start asks of a runtime (`overnight.proposers.Runtime` says it)."""

    @property
    def llm(self) -> bool:
        """It thinks with a model through the gateway: its agents need a `model`."""
        ...

    @property
    def knobs(self) -> bool:
        """It tunes `[[knobs]]`: the lab needs some."""
        ...

    def missing(self) -> str | None:
        """Why it cannot run on this machine ("problem\n  fix: ..."), or None."""
        ...


class StartChecks(Protocol):
    """What a lab's start asks of the packages it does not import."""

    def runtimes(self) -> Mapping[str, RuntimeFacts]:
        """Every runtime an agent may name, built-in or a plugin's, by name."""
        ...

    def policy_warnings(self, org: Org) -> list[str]:
        """Load the lab's governance, raising when it does not load (fail closed), and say
        what its policy tests find."""
        ...


_SHELL_WORDS = {
    "cd", "source", ".", "export", "exec", "env", "time", "nice", "nohup", "set",
    "if", "for", "while", "case", "(", "{", "!", "[", "test", "true", "eval", "ulimit",
}  # fmt: skip


def resolve(git: Git, ref: str) -> str:
    """The commit `ref` (a branch, tag or commit) names, or a UserError with the fix."""
    commit = git.rev(ref) if ref and not ref.startswith("-") else None
    if commit is None:
        raise UserError(
            f"{git.path}: no commit or branch {ref!r} in this repository.\n"
            "  fix: `git branch -a` lists the branches (an autoresearch run's is "
            f"autoresearch/<tag>); fetch one that lives on a remote first (`git fetch origin "
            f"{ref or 'BRANCH'}`), or name a commit `git log` shows."
        )
    return commit


def from_warnings(git: Git, ref: str, base: str) -> list[str]:
    """A REF whose own overnight.toml says something else than the checkout's."""
    theirs = git.tracked_files(base).get(CONFIG_FILE)
    ours = git.tracked_files("HEAD").get(CONFIG_FILE)
    if theirs is None or theirs == ours:
        return []
    return [
        f"{ref}'s overnight.toml differs from the one checked out; the lab runs by the "
        "checkout's (REF gives only the code the agents start from)"
    ]


def check(org: Org, git: Git, base: str | None, checks: StartChecks) -> list[str]:
    """Everything that would otherwise fail at 3 a.m., checked before the first trial.
    Files are checked as they are at `base` (HEAD when None), where the agents start;
    `checks` asks the packages that know runtimes and policies."""
    cfg = org.config
    path = org.config_path
    text = path.read_text(encoding="utf-8")

    warnings: list[str] = []
    # the working tree must be what HEAD says, at least for what the lab depends on
    blocking, loose = [], []
    watched = [*cfg.lab.editable, *cfg.lab.protected, CONFIG_FILE, cfg.lab.program]
    for line in git.dirty():
        status, name = line[:2], line[3:]
        if status == "??" and not globs.matches(name, watched):
            loose.append(name)
        else:
            blocking.append(line.strip())
    if blocking:
        shown = "\n".join("    " + b for b in blocking[:10])
        more = f"\n    ... and {len(blocking) - 10} more" if len(blocking) > 10 else ""
        raise RepoError(
            f"{org.root}: uncommitted changes:\n{shown}{more}\n"
            "  fix: overnight starts every agent from your last commit, so commit these "
            "(`git add -A && git commit`) or set them aside (`git stash -u`), then run again."
        )
    if loose:
        warnings.append(
            f"untracked files are not copied into the agents' worktrees: {', '.join(loose[:5])}"
            + (" ..." if len(loose) > 5 else "")
        )
    at = base or "HEAD"
    files = list(git.tracked_files(at))
    for key in ("editable", "protected"):
        for i, (glob, hits) in enumerate(globs.expand(getattr(cfg.lab, key), files).items()):
            if not hits:
                raise ConfigError(
                    path,
                    f"{glob!r} matches no file committed in the repository",
                    field=f"lab.{key}[{i}]",
                    line=line_of(text, ("lab", key)),
                    fix="check the spelling; globs are relative to overnight.toml "
                    "(`*` stays within a folder, `**` crosses folders); commit the file if it is new",
                )
    if cfg.lab.hidden:
        hidden_line = line_of(text, ("lab", "hidden"))
        holdout.refuse_exposed(git, org.root, cfg.lab.hidden, path, hidden_line)
    # Two globs can only be seen to overlap on the files they both match.
    both = [f for f in files if globs.matches(f, cfg.lab.protected)]
    both = [f for f in both if globs.matches(f, cfg.lab.editable)]
    if both:
        glob = next(g for g in cfg.lab.editable if globs.matches(both[0], [g]))
        guard = next(g for g in cfg.lab.protected if globs.matches(both[0], [g]))
        shown = ", ".join(both[:5]) + (f" and {len(both) - 5} more" if len(both) > 5 else "")
        raise ConfigError(
            path,
            f"{shown} {'is' if len(both) == 1 else 'are'} both editable (by {glob!r}) and "
            f"protected (by {guard!r}); a file can be only one of them",
            field=f"lab.protected[{cfg.lab.protected.index(guard)}]",
            line=line_of(text, ("lab", "protected")),
            fix=overlap_fix(
                glob,
                both[:5],
                [f for f in files if globs.matches(f, [glob]) and f not in both],
            ),
        )
    for i, knob in enumerate(cfg.knobs):
        if not globs.matches(knob.file, cfg.lab.editable):
            raise ConfigError(
                path,
                f"knob {knob.name!r} lives in {knob.file!r}, which is not editable",
                field=f"knobs[{i}].file",
                line=line_of(text, ("knobs", i, "file")),
                fix=f"add {knob.file!r} to lab.editable, or move the knob",
            )
    knobs.validate(
        org.root, cfg.knobs, path, read=None if base is None else lambda rel: git.show(at, rel)
    )
    for key in ("run", "evaluate", "holdout"):
        command = getattr(cfg.lab, key)
        if command:
            problem = _command_problem(command, org.root)
            if problem:
                raise ConfigError(
                    path,
                    problem,
                    field=f"lab.{key}",
                    line=line_of(text, ("lab", key)),
                    fix="check the spelling, or run overnight from the environment that has it "
                    "(e.g. activate your virtualenv first)",
                )
    runtimes = checks.runtimes()
    for i, agent in enumerate(cfg.agents):
        if agent.runtime not in runtimes:
            raise ConfigError(
                path,
                f"unknown runtime {agent.runtime!r}",
                field=f"agents[{i}].runtime",
                line=line_of(text, ("agents", i, "runtime")),
                fix=f"use one of: {', '.join(sorted(runtimes))}",
            )
    for i, agent in enumerate(cfg.agents):
        if not runtimes[agent.runtime].llm:
            continue
        routes = sorted(cfg.gateway.models) if cfg.gateway else []
        if agent.model is None or agent.model not in routes:
            given = "has no model" if agent.model is None else f"model {agent.model!r}"
            raise ConfigError(
                path,
                f"agent {agent.name!r} (runtime {agent.runtime!r}) thinks with an LLM through "
                f"the gateway, but {given}"
                + ("" if agent.model is None else " is not a [gateway.models] route"),
                field=f"agents[{i}].model",
                line=line_of(text, ("agents", i, "model"))
                if agent.model is not None
                else line_of(text, ("agents", i)),
                fix=(
                    f"set model to one of: {', '.join(routes)}"
                    if routes
                    else "add a [gateway] with [[gateway.upstreams]] and a [gateway.models] "
                    "route, and set model to that route's name"
                ),
            )
        if agent.on_brownout == "optimize" and not cfg.knobs:
            raise ConfigError(
                path,
                f'agent {agent.name!r} has on_brownout = "optimize", which tunes [[knobs]], '
                "and none are defined",
                field=f"agents[{i}].on_brownout",
                line=line_of(text, ("agents", i, "on_brownout")),
                fix='add [[knobs]], or set on_brownout = "pause"',
            )
    for i, agent in enumerate(cfg.agents):  # the environment, once the file is right
        missing = runtimes[agent.runtime].missing()
        if missing is not None:
            problem, _, fix = missing.partition("\n  fix: ")
            raise ConfigError(
                path,
                problem,
                field=f"agents[{i}].runtime",
                line=line_of(text, ("agents", i, "runtime")),
                fix=fix,
            )
    tuner = next((a.runtime for a in cfg.agents if runtimes[a.runtime].knobs), None)
    if tuner is not None and not cfg.knobs:
        raise ConfigError(
            path,
            f"the {tuner} runtime needs [[knobs]] to tune, and none are defined",
            field="knobs",
            fix="add a [[knobs]] table (name, file, low/high or choices) per setting to tune",
        )
    if cfg.lab.gpus_per_trial and cfg.executor.kind == "local":  # a cluster's are its own
        gpus = visible_gpus()
        if len(gpus) < cfg.lab.gpus_per_trial:
            raise ConfigError(
                path,
                f"gpus_per_trial = {cfg.lab.gpus_per_trial} but this machine has {len(gpus)} GPU(s)",
                field="lab.gpus_per_trial",
                line=line_of(text, ("lab", "gpus_per_trial")),
                fix="set gpus_per_trial = 0 to run on the CPU, or check CUDA_VISIBLE_DEVICES / nvidia-smi",
            )
    # governance fails closed: a policy that does not load stops the start
    warnings += checks.policy_warnings(org)
    return warnings


def sandbox_warnings(org: Org) -> list[str]:
    """A sandbox asked for must work; the default one says so when it cannot."""
    mode = org.config.lab.sandbox
    problem = None if mode == "none" else sandbox.bwrap_problem()
    if problem is None:
        return []
    if mode == "bwrap":
        raise ConfigError(
            org.config_path,
            f'sandbox = "bwrap", but {problem}',
            field="lab.sandbox",
            line=line_of(org.config_path.read_text(encoding="utf-8"), ("lab", "sandbox")),
            fix="install bubblewrap (Debian/Ubuntu: apt install bubblewrap) and allow user "
            'namespaces, or set sandbox = "none" to run without one',
        )
    return [
        f"no sandbox: {problem}, so experiments and agents' CLIs can read the lab's "
        '.overnight/ (virtual keys, the database); install bubblewrap, or set [lab] sandbox = "none" '
        "to say you accept that"
    ]


def keep_warnings(org: Org) -> list[str]:
    """What makes keeps less trustworthy than the user may think, said once at start."""
    lab = org.config.lab
    warnings = []
    if lab.min_delta is None and not lab.measures_noise:
        cost = (lab.noise_runs - 1) * lab.budget / 60
        warnings.append(
            f"min_delta is 0: measuring the noise floor would take {lab.noise_runs - 1} more "
            f"baseline runs (up to {cost:.0f} min at budget = {lab.budget / 60:g} min); set "
            'min_delta = "auto" to measure it anyway, or a number of your own'
        )
    if lab.hidden and (lab.sandbox == "none" or sandbox.bwrap_problem() is not None):
        warnings.append(
            "the hidden files are in no worktree and no commit, but without a sandbox an "
            f"experiment or an agent's CLI can still read them in {org.root}"
        )
    return warnings


def _command_problem(command: str, root: Path) -> str | None:
    try:
        words = shlex.split(command)
    except ValueError as exc:
        return f"cannot parse the command ({exc})"
    words = [w for w in words if not ("=" in w and w.split("=", 1)[0].isidentifier())]
    if not words or words[0] in _SHELL_WORDS or any(c in words[0] for c in "$`;|&<>"):
        return None
    exe = words[0]
    if "/" in exe:
        target = Path(exe) if os.path.isabs(exe) else root / exe
        return None if target.exists() else f"{exe!r} does not exist"
    return None if shutil.which(exe) else f"command {exe!r} not found on PATH"
