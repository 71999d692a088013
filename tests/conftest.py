"""Fixtures for every test: a throwaway lab, a fake OpenAI provider, stores on SQLite and
PostgreSQL, the suite's own audit key, each test's own tmux server, processes stopped when
their test ends. Helpers that are not fixtures live in tests/helpers/.

Every process a test starts sees SIGINT at its default disposition, whichever shell started
the suite: a shell without job control starts a background command with SIGINT ignored, its
children inherit that, and `overnight run` would then never hear the Ctrl-C a test sends it.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import tempfile
import uuid
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest
from hypothesis import settings
from sqlalchemy import create_engine, text

from overnight.store import SqlStore, open_store
from overnight.testing import FakeProvider
from tests.helpers.labs import make_lab
from tests.helpers.processes import start, stop

# Speed is measured in benchmarks, not asserted in tests: no per-example deadline,
# which would only make a loaded 2-core CI machine flaky.
settings.register_profile("overnight", deadline=None, print_blob=True)
settings.load_profile("overnight")

PG_URL = os.environ.get("OVERNIGHT_TEST_PG", "postgresql://127.0.0.1:5432/test")


def pytest_configure(config: pytest.Config) -> None:
    # An ignored SIGINT is inherited across exec; a handled one is reset to the default
    # there. Python installs its handler only where SIGINT was not ignored: install it.
    if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)


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


@pytest.fixture(autouse=True)
def _tmux_server_of_its_own(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """A tmux server per test (TMUX_TMPDIR, inherited by every process the test starts),
    killed when the test ends, passed or failed: the agents' terminal sessions never outlive
    their test nor meet another test's, and nothing touches the user's own tmux."""
    folder = Path(tempfile.mkdtemp(prefix="ovtmux-"))  # short: a socket's path is short
    monkeypatch.setenv("TMUX_TMPDIR", str(folder))
    yield
    tmux = shutil.which("tmux")
    for socket in folder.glob("tmux-*/*") if tmux else ():
        subprocess.run(
            [tmux, "-S", str(socket), "kill-server"], capture_output=True, check=False, timeout=30
        )
    shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture
def spawn() -> Iterator[Callable[..., subprocess.Popen[Any]]]:
    """Starts processes (tests/helpers/processes.py: `start`) that are stopped when the test
    ends, passed or failed (`stop`: Ctrl-C first), the last started first."""
    procs: list[subprocess.Popen[Any]] = []

    def spawn(argv: Sequence[str | Path], **popen: Any) -> subprocess.Popen[Any]:
        procs.append(start(argv, **popen))
        return procs[-1]

    yield spawn
    problems = []
    for proc in reversed(procs):
        try:
            stop(proc)
        except AssertionError as exc:
            problems.append(exc)
    if problems:
        raise problems[0]


@pytest.fixture
def fake() -> Iterator[FakeProvider]:
    """A fake OpenAI provider on loopback; a test enqueues its replies."""
    with FakeProvider("openai") as provider:
        yield provider


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
