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


# -- a miniature of karpathy/autoresearch's layout (written here, not copied) -------------------
# prepare.py is the protected part (data, the evaluator, the time budget); train.py the one
# file an agent edits, with its hyperparameters at the top, ending in autoresearch's summary
# block (`---`, then `name: value` lines including val_bpb and peak_vram_mb); program.md the
# agent's instructions; a uv project; results.tsv kept by hand and ignored by git.

AR_PREPARE = '''\
"""Data and evaluation. Fixed: the agent never edits this file."""
import math
import random

TIME_BUDGET = 2          # training time budget in seconds
VOCAB = 8                # symbols; every symbol is one byte


def _text(seed, n):
    rng = random.Random(seed)
    out, prev = [], 0
    for _ in range(n):
        # a Markov chain that mostly steps by one: a bigram model can learn it
        prev = (prev + (1 if rng.random() < 0.7 else rng.randrange(VOCAB))) % VOCAB
        out.append(prev)
    return out


TRAIN = _text(1, 4000)
VAL = _text(2, 1000)


def evaluate_bpb(probs):
    """Bits per byte of the model `probs[prev][next]` on the held-out text."""
    bits = 0.0
    for prev, nxt in zip(VAL, VAL[1:]):
        bits -= math.log2(max(probs[prev][nxt], 1e-12))
    return bits / (len(VAL) - 1)
'''

AR_TRAIN = '''\
"""A bigram language model trained by SGD. The agent edits this file."""
import math
import random
import time

from prepare import TIME_BUDGET, TRAIN, VOCAB, evaluate_bpb

# Hyperparameters
LEARNING_RATE = 0.5      # step size of SGD
BATCH_SIZE = 64          # bigrams per step
NUM_STEPS = 120          # optimizer steps
WEIGHT_DECAY = 0.01      # L2 on the logits
WARMUP_RATIO = 0.0       # fraction of steps warming up the learning rate
WINDOW_PATTERN = "SSSL"  # (not a number: no knob)

t0 = time.time()
rng = random.Random(0)
W = [[0.0] * VOCAB for _ in range(VOCAB)]
pairs = list(zip(TRAIN, TRAIN[1:]))
for step in range(NUM_STEPS):
    warm = max(1, int(WARMUP_RATIO * NUM_STEPS))
    lr = LEARNING_RATE * min(1.0, (step + 1) / warm)
    for prev, nxt in rng.sample(pairs, BATCH_SIZE):
        row = W[prev]
        top = max(row)
        exp = [math.exp(v - top) for v in row]
        total = sum(exp)
        for j in range(VOCAB):
            grad = exp[j] / total - (1.0 if j == nxt else 0.0)
            row[j] -= lr * (grad / BATCH_SIZE + WEIGHT_DECAY * row[j] / len(pairs))
probs = []
for row in W:
    top = max(row)
    exp = [math.exp(v - top) for v in row]
    probs.append([e / sum(exp) for e in exp])
val_bpb = evaluate_bpb(probs)
t1 = time.time()

print("---")
print(f"val_bpb:          {val_bpb:.6f}")
print(f"training_seconds: {t1 - t0:.1f}")
print(f"peak_vram_mb:     {256 + BATCH_SIZE * 4.0:.1f}")
print(f"num_steps:        {NUM_STEPS}")
'''

AR_PROGRAM = """\
# autoresearch (miniature)

You are an autonomous researcher. Improve `train.py` so that `val_bpb` goes down.

- Only `train.py` may change; `prepare.py` holds the data and the evaluator.
- Run an experiment with `uv run train.py > run.log 2>&1`, read `val_bpb` from run.log.
- Log every experiment in results.tsv (commit, val_bpb, memory_gb, status, description);
  keep a change that improves val_bpb, `git reset` one that does not.
- Never stop: the human is asleep.
"""

AR_FILES = {
    "prepare.py": AR_PREPARE,
    "train.py": AR_TRAIN,
    "program.md": AR_PROGRAM,
    "pyproject.toml": '[project]\nname = "autoresearch-mini"\nversion = "0.1.0"\n'
    'requires-python = ">=3.10"\ndependencies = []\n',
    "uv.lock": 'version = 1\nrequires-python = ">=3.10"\n',
    ".gitignore": "results.tsv\nrun.log\n.venv/\n__pycache__/\n",
    "README.md": "# autoresearch-mini\n",
}


def make_autoresearch(root: Path) -> Path:
    """A committed git repository laid out like an autoresearch fork, before any overnight."""
    root.mkdir(parents=True, exist_ok=True)
    git(root, "init", "-q", "-b", "master")
    for rel, content in AR_FILES.items():
        (root / rel).write_text(content)
    git(root, "add", "-A")
    git(root, "commit", "-q", "-m", "autoresearch-mini")
    return root


def uv_on_path(root: Path) -> dict[str, str]:
    """An environment whose PATH has a stand-in `uv` that runs `uv run SCRIPT` with this
    Python: uv is not installed here, and where it is, a real one would need its cache
    (or the network) to build the project's environment, which is not what is tested.
    The stand-in lives inside the repository's .git folder: the sandbox shows experiments
    a private /tmp, and the lab's own folder is the one place under the test's temporary
    folder it shows (and .git is not tracked)."""
    bin_dir = root / ".git" / "test-bin"
    bin_dir.mkdir(exist_ok=True)
    shim = bin_dir / "uv"
    shim.write_text(
        "#!/bin/sh\n"
        "# a stand-in for uv, which is not installed here: `uv run SCRIPT [ARGS]` only\n"
        "[ \"$1\" = run ] || { echo 'stand-in uv: only uv run works' >&2; exit 2; }\n"
        "shift\n"
        f'exec {sys.executable} "$@"\n'
    )
    shim.chmod(0o755)
    return {"PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}"}
