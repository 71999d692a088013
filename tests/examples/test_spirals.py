"""The shipped `spirals` example lab really trains, really scores, and really can be tuned.

These tests run the lab's own commands (`python train.py`, `python evaluate.py`)
in a copy of the example, exactly as a trial would, so they take ~15 s.
"""

import ast
import math
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

from tests.helpers import REPO

LAB = REPO / "overnight" / "examples" / "spirals"
LAB_FILES = ["prepare.py", "train.py", "evaluate.py"]

# A setting inside the knob ranges that a 12-trial tuner finds easily: a smaller
# tanh net, a higher learning rate and real weight decay stop the overfitting.
TUNED = {
    "LEARNING_RATE": 0.02,
    "HIDDEN_SIZE": 24,
    "ACTIVATION": "tanh",
    "WEIGHT_DECAY": 0.03,
    "BATCH_SIZE": 128,
}


def copy_lab(dest: Path) -> Path:
    dest.mkdir()
    for name in LAB_FILES:
        shutil.copy(LAB / name, dest / name)
    return dest


def set_knobs(train_py: Path, values: dict[str, object]) -> None:
    text = train_py.read_text()
    for name, value in values.items():
        literal = f'"{value}"' if isinstance(value, str) else repr(value)
        text, n = re.subn(rf"^{name} = .*$", f"{name} = {literal}", text, flags=re.M)
        assert n == 1, f"{name} should be assigned exactly once at column 0"
    train_py.write_text(text)


def run(cmd: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, cmd], cwd=cwd, capture_output=True, text=True, timeout=120
    )


def train_and_evaluate(lab: Path) -> float:
    trained = run("train.py", lab)
    assert trained.returncode == 0, trained.stderr
    assert re.search(r"^train_loss: \S+$", trained.stdout, re.M), trained.stdout
    assert re.search(r"^training_seconds: \S+$", trained.stdout, re.M), trained.stdout
    assert (lab / "model.npz").is_file()

    scored = run("evaluate.py", lab)
    assert scored.returncode == 0, scored.stderr
    lines = re.findall(r"^val_loss: (\S+)$", scored.stdout, re.M)
    assert len(lines) == 1, scored.stdout
    value = float(lines[0])
    assert math.isfinite(value)
    return value


def test_baseline_scores_and_tuned_knobs_beat_it_by_10_percent(tmp_path: Path) -> None:
    baseline = train_and_evaluate(copy_lab(tmp_path / "baseline"))
    # Between "knows nothing" (ln 4) and the best any model could do (~0.30).
    assert 0.30 < baseline < math.log(4)

    tuned_lab = copy_lab(tmp_path / "tuned")
    set_knobs(tuned_lab / "train.py", TUNED)
    tuned = train_and_evaluate(tuned_lab)
    assert tuned <= 0.9 * baseline, (baseline, tuned)


def test_evaluate_fails_clearly_without_a_model(tmp_path: Path) -> None:
    scored = run("evaluate.py", copy_lab(tmp_path / "lab"))
    assert scored.returncode != 0
    assert "model.npz not found" in scored.stderr
    assert "val_loss" not in scored.stdout


def test_every_knob_is_one_column_zero_assignment_inside_its_range() -> None:
    config = tomllib.loads((LAB / "overnight.toml").read_text())
    source = (LAB / "train.py").read_text()
    assert len(config["knobs"]) >= 4
    for knob in config["knobs"]:
        lines = re.findall(rf"^{knob['name']} = (.*?)(?:\s+#.*)?$", source, re.M)
        assert len(lines) == 1, knob["name"]
        value = ast.literal_eval(lines[0])  # a Python literal, as the tuner writes it
        if "choices" in knob:
            assert value in knob["choices"], knob["name"]
        else:
            assert knob["low"] <= value <= knob["high"], knob["name"]
