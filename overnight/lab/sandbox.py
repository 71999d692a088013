"""The walls around what overnight runs but does not trust: experiments and agents' CLIs.

Owns three things such a process gets:

- **its environment**, built from an allowlist plus what `[lab] env` adds, so
  overnight's own secrets (a provider credential read from `env = "..."`, a
  database URL with its password, the audit key's path) never reach it;
- **a bubblewrap sandbox** (`[lab] sandbox`, on by default where `bwrap` works):
  the whole filesystem read-only, only its worktree (and declared caches) writable,
  a private `/tmp`, the lab's `.overnight/` (keys, database, other agents' files),
  the audit key and known credential files absent, a PID namespace of its own (no
  `/proc/<overnight>/environ` to read), the network optional, and death with
  overnight (`--die-with-parent`);
- **a watchdog that outlives overnight** where no sandbox runs: coreutils `timeout`
  leads the experiment's process group and kills all of it a few seconds after
  budget + grace, so a `kill -9` of overnight cannot leave it running for hours.

Knows nothing about trials, the store or git: callers say which paths are whose.
"""

from __future__ import annotations

import functools
import glob
import os
import shutil
import subprocess
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

ALLOWED_ENV = frozenset({
    "PATH", "HOME", "USER", "LOGNAME", "SHELL", "LANG", "LANGUAGE", "TERM", "COLORTERM", "TZ",
    "VIRTUAL_ENV", "CONDA_PREFIX", "CONDA_DEFAULT_ENV", "CONDA_EXE", "CONDA_PYTHON_EXE",
    "PYTHONPATH", "LD_LIBRARY_PATH", "CUDA_HOME", "CUDA_PATH", "CUDA_VISIBLE_DEVICES",
    "NVIDIA_VISIBLE_DEVICES", "OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS",
    "NUMEXPR_NUM_THREADS", "XDG_CACHE_HOME", "XDG_DATA_HOME", "HF_HOME", "HF_DATASETS_CACHE",
    "TORCH_HOME", "UV_CACHE_DIR", "UV_PYTHON_INSTALL_DIR", "PIP_CACHE_DIR", "SSL_CERT_FILE",
    "SSL_CERT_DIR", "REQUESTS_CA_BUNDLE",
})  # fmt: skip
"""What an experiment or an agent's CLI inherits from overnight's environment: where
programs and libraries are, the locale, caches, thread counts, CA files — nothing that
is usually a credential (`*_API_KEY`, tokens, proxies with passwords, `OVERNIGHT_DB`)."""
ALLOWED_PREFIXES = ("LC_",)
NEVER_ENV = frozenset({"OVERNIGHT_DB", "OVERNIGHT_AUDIT_KEY"})
"""overnight's own: never passed, even when `[lab] env` names them."""

CREDENTIAL_PATHS = (
    "~/.ssh", "~/.aws", "~/.gnupg", "~/.netrc", "~/.git-credentials", "~/.docker",
    "~/.kube", "~/.azure", "~/.config/gcloud", "~/.config/gh", "~/.pypirc", "~/.npmrc",
    "~/.claude", "~/.claude.json", "~/.codex", "~/.config/overnight", "~/.aider.conf.yml",
)  # fmt: skip
"""Where a user's own credentials usually are (and overnight's audit key): absent in the
sandbox. An experiment that needs one gets it through `[lab] env` or `writable`."""
KILL_WAIT_S = 3
"""Seconds between TERM and KILL, here and in the runner."""


def environment(
    base: Mapping[str, str],
    lab_env: Iterable[str] = (),
    *,
    never: Iterable[str] = (),
    extra: Mapping[str, str] | None = None,
) -> dict[str, str]:
    """An untrusted process's environment: the allowlisted part of `base`, then
    `lab_env` (`NAME` passes `base`'s value on, `NAME=value` sets it), then `extra`
    (overnight's own markers). Names in `never` (credential variables) are dropped
    whatever asked for them."""
    blocked = NEVER_ENV | set(never)
    env = {
        k: v
        for k, v in base.items()
        if (k in ALLOWED_ENV or k.startswith(ALLOWED_PREFIXES)) and k not in blocked
    }
    for item in lab_env:
        name, eq, value = item.partition("=")
        if name in blocked:
            continue
        if eq:
            env[name] = value
        elif name in base:
            env[name] = base[name]
    env.update(extra or {})
    return env


@dataclass(frozen=True)
class Walls:
    """What one sandboxed process may see and write."""

    cwd: Path
    writable: tuple[Path, ...] = ()
    """Bound read-write (missing paths are skipped)."""
    readable: tuple[Path, ...] = ()
    """Bound read-only, like `writable` shown even inside a hidden folder."""
    hidden: tuple[Path, ...] = ()
    """Absent: an empty folder for a directory, an empty file for a file."""
    visible: tuple[Path, ...] = ()
    """Shown read-only again after /tmp is replaced by a private one (a lab under /tmp)."""
    network: bool = True
    devices: tuple[str, ...] = field(default_factory=lambda: _gpu_devices())

    def argv(self) -> list[str]:
        """The bwrap command line that runs what follows it inside these walls."""
        argv = [bwrap_binary() or "bwrap", "--ro-bind", "/", "/", "--dev", "/dev"]
        for device in self.devices:
            argv += ["--dev-bind", device, device]
        argv += ["--proc", "/proc", "--tmpfs", "/tmp"]
        for path in self.visible:
            if path.exists():
                argv += ["--ro-bind", str(path), str(path)]
        for path in self.hidden:
            if path.is_dir():
                argv += ["--tmpfs", str(path)]
            elif path.exists():
                argv += ["--ro-bind", "/dev/null", str(path)]
        for bind, paths in (("--ro-bind", self.readable), ("--bind", self.writable)):
            for path in paths:
                if path.exists():
                    argv += [bind, str(path), str(path)]
        argv += ["--unshare-pid", "--unshare-ipc", "--die-with-parent", "--chdir", str(self.cwd)]
        if not self.network:
            argv.append("--unshare-net")
        return [*argv, "--"]


def homes_of(program: Path) -> tuple[Path, ...]:
    """What running `program` needs shown again in a sandbox that replaced the /tmp it may lie
    under: the folder it is called by and the one it resolves to (a virtualenv's, for a
    `bin`: its site-packages), and a `node_modules` tree either lies in (an npm CLI loads
    its platform package from a sibling folder there)."""
    found: list[Path] = []
    # the folder it is called by, with the links above it followed: bwrap cannot make a
    # mount point under a symbolic link (a checkout whose `build` links to another's)
    called = program.absolute().parent.resolve() / program.name
    for path in (called, program.resolve()):
        folder = path.parent
        found.append(folder.parent if folder.name == "bin" else folder)
        found += [p for p in path.parents if p.name == "node_modules"][:1]
    return tuple(dict.fromkeys(found))


def hidden_paths(state_dir: Path, credential_files: Iterable[str] = ()) -> tuple[Path, ...]:
    """The lab's state, the audit key and credential files, as absolute paths."""
    paths = [state_dir, *(Path(p).expanduser() for p in (*CREDENTIAL_PATHS, *credential_files))]
    audit_key = os.environ.get("OVERNIGHT_AUDIT_KEY")
    if audit_key:
        paths.append(Path(audit_key).expanduser().parent)
    return tuple(dict.fromkeys(p.resolve() if p.exists() else p for p in paths))


def bwrap_binary() -> str | None:
    """`OVERNIGHT_BWRAP` (a bwrap of your choice), else `bwrap` on PATH."""
    override = os.environ.get("OVERNIGHT_BWRAP")
    if override:
        return override if os.access(override, os.X_OK) else None
    return shutil.which("bwrap")


@functools.lru_cache(maxsize=1)
def bwrap_problem() -> str | None:
    """Why bubblewrap cannot sandbox here (None: it can). Tried once per process: a real
    sandbox with a PID namespace, which is what fails where user namespaces are off."""
    if bwrap_binary() is None:
        where = os.environ.get("OVERNIGHT_BWRAP")
        return (
            f"OVERNIGHT_BWRAP={where} is not an executable"
            if where
            else ("bubblewrap (bwrap) is not installed")
        )
    probe = Walls(cwd=Path("/"), devices=()).argv()
    try:
        done = subprocess.run(
            [*probe, "true"],
            capture_output=True,
            text=True,
            timeout=20,
            env={"PATH": "/usr/bin:/bin"},
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"bwrap did not run ({exc})"
    if done.returncode != 0:
        first = (done.stderr.strip().splitlines() or [f"exit code {done.returncode}"])[0]
        return f"bwrap cannot make a sandbox here ({first})"
    return None


def watchdog(seconds: float) -> list[str]:
    """A command prefix that kills the whole process group once `seconds` plus the TERM to
    KILL wait have passed, whoever else is still around: the budget's last word when
    overnight itself is gone. Empty where coreutils `timeout` is missing."""
    exe = shutil.which("timeout")
    if exe is None:
        return []
    # KILL, not TERM: overnight's own TERM came KILL_WAIT_S earlier if it is alive, and
    # `timeout` would only KILL its direct child after a TERM, not a grandchild that
    # ignores TERM.
    return [exe, "--signal=KILL", f"{seconds + KILL_WAIT_S + 1:.0f}s"]


def _gpu_devices() -> tuple[str, ...]:
    return tuple(sorted(glob.glob("/dev/nvidia*") + glob.glob("/dev/dri")))
