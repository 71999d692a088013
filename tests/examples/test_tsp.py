"""The shipped `tsp` example lab: listed, copied and run end to end through the CLI.

A random heuristic search with a noisy metric, so a run measures its noise floor at the
start; its evaluator refuses anything that is not a tour. A run of a few trials takes
about 20 s.
"""

from __future__ import annotations

import ast
import json
import os
import re
import subprocess
import sys
import tomllib
from pathlib import Path

from overnight.store import open_store, store_url
from tests.helpers.processes import run_cli

LAB = Path(__file__).resolve().parents[2] / "overnight" / "examples" / "tsp"
# the lab's `python` is the one running the tests, as `make demo` does for spirals
ENV = {"PATH": os.pathsep.join([str(Path(sys.executable).parent), os.environ["PATH"]])}


def test_tsp_is_listed_copied_and_runs_end_to_end_with_its_noise_floor(tmp_path: Path) -> None:
    listing = run_cli("example", "list")
    assert listing.returncode == 0 and re.search(r"^tsp\s+tsp: ", listing.stdout, re.M)
    lab = tmp_path / "tsp-lab"
    made = run_cli("example", "tsp", str(lab))
    assert made.returncode == 0, made.stderr

    result = run_cli("run", str(lab), "--trials", "4", "--no-ui", env=ENV)
    assert result.returncode == 0, result.stdout + result.stderr
    status = json.loads(run_cli("status", str(lab), "--json").stdout)
    floor = status["noise_floor"]
    assert len(floor["runs"]) == 3 and floor["sigma"] > 0  # the solver is random
    assert floor["min_delta"] == 2 * floor["sigma"] == status["min_delta"]

    store = open_store(store_url(lab))
    try:
        run = store.latest_run("tsp")
        assert run is not None
        trials = store.trials(run.id)
    finally:
        store.close()
    baseline, *tried = trials
    assert baseline.status.value == "kept" and baseline.metric is not None
    assert 7.0 < baseline.metric < 9.0, baseline.metric  # the committed settings: about 8.1
    assert len(tried) == 4 and {t.agent for t in tried} <= {"tuner-1", "tuner-2"}
    assert all(t.status.value in ("kept", "discarded") for t in tried), [
        (t.status, t.reason) for t in tried
    ]


def test_the_evaluator_scores_a_tour_and_refuses_anything_else(tmp_path: Path) -> None:
    lab = tmp_path / "lab"
    assert run_cli("example", "tsp", str(lab)).returncode == 0

    def run(script: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, script], cwd=lab, capture_output=True, text=True, timeout=60
        )

    missing = run("evaluate.py")
    assert missing.returncode != 0 and "tour.txt not found" in missing.stderr
    solved = run("solve.py")
    assert solved.returncode == 0 and re.search(r"^solve_seconds: \S+$", solved.stdout, re.M)
    scored = run("evaluate.py")
    assert scored.returncode == 0, scored.stderr
    (value,) = re.findall(r"^tour_length: (\S+)$", scored.stdout, re.M)
    assert 7.0 < float(value) < 9.0

    cities = (lab / "tour.txt").read_text().split()
    (lab / "tour.txt").write_text(" ".join([cities[0], *cities[:-1]]))  # one city twice
    cheat = run("evaluate.py")
    assert cheat.returncode != 0 and "is not a tour" in cheat.stderr
    assert "tour_length" not in cheat.stdout


def test_every_knob_is_one_column_zero_assignment_inside_its_range() -> None:
    config = tomllib.loads((LAB / "overnight.toml").read_text())
    source = (LAB / "solve.py").read_text()
    assert len(config["knobs"]) >= 4
    for knob in config["knobs"]:
        lines = re.findall(rf"^{knob['name']} = (.*?)(?:\s+#.*)?$", source, re.M)
        assert len(lines) == 1, knob["name"]
        value = ast.literal_eval(lines[0])
        if "choices" in knob:
            assert value in knob["choices"], knob["name"]
        else:
            assert knob["low"] <= value <= knob["high"], knob["name"]
