"""Plugins: a runtime from a package installed with pip runs trials like a built-in one.

Each plugin here is a real wheel, installed by pip into a directory of its own
that the CLI's subprocess has on its path, so overnight finds it the way it
finds any installed package's: through the `overnight` entry-point group in its
metadata. (The wheel is written here rather than built: no build backend that
works offline is installed. Its `entry_points.txt` is what a pyproject's
`[project.entry-points.overnight]` table becomes.)
"""

from __future__ import annotations

import base64
import hashlib
import os
import subprocess
import sys
import textwrap
import zipfile
from pathlib import Path

import pytest

from tests.helpers.labs import make_lab
from tests.helpers.processes import run_cli

HALVER = '''\
"""A third-party runtime: `halver` moves X halfway to 3 each trial, no model needed."""
import re
from pathlib import Path

from overnight.lab.proposal import Proposal
from overnight.proposers import ProposerRuntime

X_LINE = re.compile(r"^X = (.+)$", re.M)


class Halver:
    def __init__(self, setup):
        self.agent = setup.agent

    def propose(self, worktree, trial):
        x = float(X_LINE.search((worktree / "exp.py").read_text()).group(1))
        new = (x + 3) / 2

        def apply(tree: Path) -> None:
            path = tree / "exp.py"
            path.write_text(X_LINE.sub(f"X = {new}", path.read_text()))

        return Proposal(f"halver: X {x} -> {new}", {"X": new}, apply)

    def observe(self, trial): pass
    def resume(self, finished, requeue): pass
    def baseline(self, trial, worktree): pass
    def adopted(self, worktree, best): pass


def register_runtimes(register):
    register(ProposerRuntime("halver", Halver))
'''

CONFIG = """\
[lab]
name = "plug"
editable = ["exp.py"]
protected = ["judge.py"]
run = "{python} exp.py"
metric = "score"
budget = "20s"

[[agents]]
name = "h"
runtime = "{runtime}"
"""


def wheel(tmp: Path, dist: str, entry: str, files: dict[str, str]) -> Path:
    """A wheel of `files`, naming `entry` ("name = module") in the overnight group."""
    version = "0.1"
    info = f"{dist}-{version}.dist-info"
    contents = {
        **files,
        f"{info}/METADATA": f"Metadata-Version: 2.1\nName: {dist}\nVersion: {version}\n",
        f"{info}/WHEEL": "Wheel-Version: 1.0\nGenerator: tests\nRoot-Is-Purelib: true\n"
        "Tag: py3-none-any\n",
        f"{info}/entry_points.txt": f"[overnight]\n{entry}\n",
    }
    record = [
        f"{name},sha256="
        + base64.urlsafe_b64encode(hashlib.sha256(text.encode()).digest()).rstrip(b"=").decode()
        + f",{len(text.encode())}"
        for name, text in contents.items()
    ]
    contents[f"{info}/RECORD"] = "\n".join([*record, f"{info}/RECORD,,"]) + "\n"
    path = tmp / f"{dist}-{version}-py3-none-any.whl"
    with zipfile.ZipFile(path, "w") as zf:
        for name, text in contents.items():
            zf.writestr(name, text)
    return path


def install(wheel_path: Path, target: Path) -> dict[str, str]:
    """pip-install the wheel into `target`; the environment a CLI run sees it from."""
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-index",
         "--disable-pip-version-check", "--target", str(target), str(wheel_path)],
        check=True, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    path = [str(target), *filter(None, [os.environ.get("PYTHONPATH")])]
    return {"PYTHONPATH": os.pathsep.join(path)}


@pytest.fixture(scope="module")
def halver(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """The environment of a machine where the `halver-overnight` package is installed."""
    tmp = tmp_path_factory.mktemp("halver")
    made = wheel(tmp, "halver_overnight", "halver = halver_overnight", {
        "halver_overnight/__init__.py": HALVER,
    })  # fmt: skip
    return install(made, tmp / "site")


def plug_lab(root: Path, runtime: str) -> Path:
    return make_lab(root, config=CONFIG.format(python=sys.executable, runtime=runtime))


def test_a_runtime_from_an_installed_package_runs_trials(
    tmp_path: Path, halver: dict[str, str]
) -> None:
    lab = plug_lab(tmp_path / "lab", "halver")
    result = run_cli("run", str(lab), "--trials", "2", "--no-ui", env=halver)
    assert result.returncode == 0, result.stderr
    rows = [line.split("\t") for line in run_cli("ledger", str(lab), "--tsv").stdout.splitlines()]
    assert [r[3:5] for r in rows[1:]] == [
        ["keep", "baseline"],
        ["keep", "halver: X 0.5 -> 1.75"],
        ["keep", "halver: X 1.75 -> 2.375"],
    ]
    assert [float(r[1]) for r in rows[1:]] == [22.25, 17.5625, 16.390625]


def test_an_unknown_runtime_lists_the_plugins_runtimes_too(
    tmp_path: Path, halver: dict[str, str]
) -> None:
    lab = plug_lab(tmp_path / "lab", "halvr")
    result = run_cli("run", str(lab), env=halver)
    assert result.returncode == 2
    assert "agents[0].runtime: unknown runtime 'halvr'" in result.stderr
    assert "use one of: aider, claude-code, codex, halver, llm, optuna" in result.stderr


def test_a_plugin_that_does_not_load_is_one_clear_error(tmp_path: Path) -> None:
    broken = textwrap.dedent("""\
        import overnight_helpers_that_do_not_exist

        def register_runtimes(register):
            pass
    """)
    made = wheel(tmp_path, "broken_plugin", "broken = broken_plugin", {
        "broken_plugin/__init__.py": broken,
    })  # fmt: skip
    env = install(made, tmp_path / "site")
    lab = plug_lab(tmp_path / "lab", "optuna")
    result = run_cli("run", str(lab), env=env)
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    err = " ".join(result.stderr.split())
    assert "plugin 'broken' (entry point `broken = broken_plugin`" in err
    assert "of package broken_plugin 0.1) does not load" in err
    assert "No module named 'overnight_helpers_that_do_not_exist'" in err
    assert "broken_plugin/__init__.py:1" in err  # where, for its author
    assert "pip uninstall broken_plugin" in err


def test_a_plugin_cannot_take_a_built_in_runtime_s_name(tmp_path: Path) -> None:
    made = wheel(tmp_path, "codex_again", "codex2 = codex_again", {
        "codex_again/__init__.py": HALVER.replace('"halver"', '"codex"'),
    })  # fmt: skip
    lab = plug_lab(tmp_path / "lab", "optuna")
    result = run_cli("run", str(lab), env=install(made, tmp_path / "site"))
    assert result.returncode == 2
    err = " ".join(result.stderr.split())
    assert "plugin 'codex2' (entry point `codex2 = codex_again`" in err
    assert "registers 'codex', a name taken by built-in plugin overnight.agents.runtimes" in err
    assert "pip uninstall codex_again" in err
