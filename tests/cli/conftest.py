"""Fixtures of the CLI's tests: a fork of karpathy/autoresearch, before any overnight."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

from tests.helpers.labs import git

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


@pytest.fixture
def fork(tmp_path: Path) -> tuple[Path, dict[str, str]]:
    """A committed git repository laid out like an autoresearch fork, before any overnight,
    and the environment to run overnight in there (`uv` on its PATH)."""
    root = tmp_path / "fork"
    root.mkdir()
    git(root, "init", "-q", "-b", "master")
    for rel, content in AR_FILES.items():
        (root / rel).write_text(content)
    git(root, "add", "-A")
    git(root, "commit", "-q", "-m", "autoresearch-mini")
    return root, uv_on_path(root)


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
