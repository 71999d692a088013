"""Shared fixtures: throwaway git labs, stores on SQLite and PostgreSQL, the real CLI."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import settings
from sqlalchemy import create_engine, text

from overnight.store import SqlStore, open_store

# Speed is measured in benchmarks, not asserted in tests: no per-example deadline,
# which would only make a loaded 2-core CI machine flaky.
settings.register_profile("overnight", deadline=None, print_blob=True)
settings.load_profile("overnight")

PG_URL = os.environ.get("OVERNIGHT_TEST_PG", "postgresql://127.0.0.1:5432/test")
OVERNIGHT = [sys.executable, "-m", "overnight"]


@pytest.fixture(autouse=True, scope="session")
def _audit_key(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """Every lab the suite runs signs its audit chain with a key of the suite's own, never
    the user's (~/.config/overnight/audit.key), inherited by the CLI subprocesses too."""
    before = os.environ.get("OVERNIGHT_AUDIT_KEY")
    os.environ["OVERNIGHT_AUDIT_KEY"] = str(tmp_path_factory.mktemp("audit-key") / "audit.key")
    yield
    if before is None:
        os.environ.pop("OVERNIGHT_AUDIT_KEY", None)
    else:
        os.environ["OVERNIGHT_AUDIT_KEY"] = before


def process_gone(pid: int) -> bool:
    """True once `pid` has exited; a zombie waiting for its parent to reap it counts as gone
    (an orphan's parent is PID 1 or a subreaper, which may reap it late or never)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except (FileNotFoundError, ProcessLookupError):
        return True


TOY_SCRIPT = """\
import os, sys
X = 0.5
Y = 5
print("training...")
print(f"score: {(X - 3) ** 2 + (Y - 1) ** 2}")
"""

TOY_CONFIG = """\
[lab]
name = "toy"
editable = ["exp.py"]
protected = ["judge.py"]
run = "{python} exp.py"
metric = "score"
budget = "20s"
grace = "5s"
parallel = {parallel}
{lab_extra}

[[knobs]]
name = "X"
file = "exp.py"
low = -5
high = 5

[[knobs]]
name = "Y"
file = "exp.py"
low = -5
high = 5
int = true

[[agents]]
name = "t"
count = {agents}
"""


def git(cwd: Path, *args: str) -> str:
    return subprocess.run(
        ["git", "-c", "user.name=t", "-c", "user.email=t@t", *args],
        cwd=cwd,
        check=True,
        capture_output=True,
        text=True,
    ).stdout


def make_lab(
    root: Path,
    *,
    script: str = TOY_SCRIPT,
    parallel: int = 1,
    agents: int = 1,
    lab_extra: str = "",
    config: str | None = None,
    files: dict[str, str] | None = None,
) -> Path:
    """A committed git repository holding a tiny, fast lab."""
    root.mkdir(parents=True, exist_ok=True)
    git(root, "init", "-q", "-b", "main")
    (root / "exp.py").write_text(script)
    (root / "judge.py").write_text("# the protected evaluator\n")
    (root / "program.md").write_text("# toy\nMake score small.\n")
    body = config or TOY_CONFIG.format(
        python=sys.executable, parallel=parallel, agents=agents, lab_extra=lab_extra
    )
    (root / "overnight.toml").write_text(textwrap.dedent(body))
    for rel, content in (files or {}).items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(content)
    git(root, "add", "-A")
    git(root, "commit", "-q", "-m", "lab")
    return root


def run_cli(
    *args: str, env: dict[str, str] | None = None, timeout: float = 240
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*OVERNIGHT, *args],
        capture_output=True,
        text=True,
        env={**os.environ, **(env or {})},
        timeout=timeout,
    )


@pytest.fixture
def lab(tmp_path: Path) -> Path:
    return make_lab(tmp_path / "lab")


def _pg_schema_url() -> Iterator[str]:
    schema = "t_" + uuid.uuid4().hex[:12]
    engine = create_engine(PG_URL.replace("postgresql://", "postgresql+psycopg://"))
    try:
        with engine.begin() as conn:
            conn.execute(text(f"CREATE SCHEMA {schema}"))
    except Exception as exc:  # pragma: no cover - environment problem, reported loudly
        pytest.fail(f"PostgreSQL at {PG_URL} is not reachable ({exc}); start it (see README)")
    try:
        yield f"{PG_URL}?options=-csearch_path%3D{schema}"
    finally:
        with engine.begin() as conn:
            conn.execute(text(f"DROP SCHEMA {schema} CASCADE"))
        engine.dispose()


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A fresh, empty database URL on each backend."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'overnight.db'}"
    else:
        yield from _pg_schema_url()


@pytest.fixture
def store(store_url: str) -> Iterator[SqlStore]:
    s = open_store(store_url)
    assert isinstance(s, SqlStore)
    yield s
    s.close()


@pytest.fixture
def pg_url() -> Iterator[str]:
    yield from _pg_schema_url()
