"""`overnight costs` answered before the app is built (`overnight.cli.quick`): the same
answer as the app's, on SQLite and PostgreSQL, without importing SQLAlchemy, pydantic or
typer; a config edited (or broken) since is seen at once; a lab being written gives a
consistent answer."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from overnight.costs.config import config_bytes, save, saved
from overnight.costs.overview import ALLOWANCE, ANOMALY, FORECAST, overview
from overnight.lab.resume import config_fingerprint
from overnight.org import load_org
from overnight.records import ATTEMPT_FIELDS, AgentRecord
from overnight.records import TrialStatus as S
from overnight.store import SqlStore, open_store
from overnight.store import store_url as lab_store_url
from overnight.store.direct import open_snapshot
from tests.helpers.labs import make_lab
from tests.helpers.processes import run_cli

RUN = "20260101-000000"
HOUR = 3600.0
CONFIG = """\
[lab]
name = "toy"
editable = ["exp.py"]
protected = ["judge.py"]
run = "python exp.py"
metric = "score"
goal = "maximize"

[[agents]]
name = "coder"
runtime = "llm"
model = "smart"
count = 2
budget = 40

[[agents]]
name = "solo"
runtime = "llm"
model = "cheap"

[gateway]
port = 0

[[gateway.upstreams]]
name = "primary"
protocol = "openai"
base_url = "http://127.0.0.1:9/v1"
credentials = [{ name = "main", env = "FAKE_OPENAI_KEY" }]

[gateway.models]
smart = ["primary/gpt-fake-1"]
cheap = ["primary/claude-haiku-4-5"]

[gateway.prices.gpt-fake-1]
input = 2.0
output = 10.0
cache_read = 0.5

[gateway.budgets]
org = { total_usd = 50, daily_usd = 30 }
agent = { daily_usd = 5 }
"""
AGENTS = ("coder-1", "coder-2", "solo")
NOT_IMPORTED = {"sqlalchemy", "pydantic", "typer", "overnight.org"}


@pytest.fixture
def night(tmp_path: Path, store_url: str) -> Iterator[tuple[Path, dict[str, str]]]:
    """A lab whose store holds a run with trials, events and metered attempts hours old
    (so the burn rate is nil and the answer stands still between two asks); on SQLite the
    lab's own database, on PostgreSQL the one `OVERNIGHT_DB` names. (lab, its env)"""
    lab = make_lab(tmp_path / "lab", config=CONFIG)
    (lab / ".overnight").mkdir()
    env = {} if store_url.startswith("sqlite") else {"OVERNIGHT_DB": store_url}
    store = open_store(env.get("OVERNIGHT_DB") or lab_store_url(lab))
    try:
        _seed(store, lab, time.time() - 30 * HOUR)
    finally:
        store.close()
    yield lab, env


def _seed(store: Any, lab: Path, start: float) -> None:
    store.create_run(RUN, "toy", "0" * 40, {}, config_fingerprint(load_org(lab)))
    for name in AGENTS:
        store.put_agent(AgentRecord(RUN, name, "llm", f"b/{name}", str(lab), "0" * 40))
    metric = 1.0
    for i in range(12):
        t = store.add_trial(RUN, AGENTS[i % 3], "0" * 40, f"try {i}", {})
        store.update_trial(t.id, S.applied, candidate_commit=f"{i:040x}", diff="d")
        store.update_trial(t.id, S.checked)
        store.update_trial(t.id, S.running, started_at=start)
        if i % 4 == 3:
            store.update_trial(t.id, S.crashed, reason="exit 1", finished_at=start + i)
            continue
        store.update_trial(t.id, S.measured, metric=metric + (i % 3) * 0.1)
        if i % 3 != 2:
            metric += 0.1
            store.update_trial(t.id, S.kept, finished_at=start + i * 60)
        else:
            store.update_trial(t.id, S.discarded, reason="worse", finished_at=start + i * 60)
    # a deadline passed: the table's clock says no "in N h", which would tick between asks
    store.append_event(RUN, ALLOWANCE, {"until": start + 20 * HOUR})
    store.append_event(RUN, ANOMALY, {"title": "coder-1 spent fast", "measure": "usd"},
                       agent="coder-1")  # fmt: skip
    store.append_event(RUN, FORECAST, {"spent_usd": 0.1, "burn_usd_per_h": 0.01,
                                       "until": start + 20 * HOUR, "at_end_usd": 0.5})  # fmt: skip
    _attempts(store, start, 60)


def _attempts(store: Any, start: float, n: int, *, tag: str = "a") -> None:
    """`n` attempts over 26 hours from `start`, on both routes, some retried or unpriced."""
    rows = []
    for i in range(n):
        agent = AGENTS[i % 3]
        route, model = ("cheap", "claude-haiku-4-5") if agent == "solo" else ("smart", "gpt-fake-1")
        if i % 7 == 6:
            model = "unknown-model"
        attempt = {
            "request_id": f"{tag}{i}", "attempt": 2 if i % 5 == 4 else 1, "agent": agent,
            "trial": str(i % 12 + 1), "route": route, "upstream": "primary", "model": model,
            "credential": "main", "client_protocol": "openai", "upstream_protocol": "openai",
            "stream": False, "outcome": "ok", "status": 200, "error": None,
            "started_at": start + (i * 26 * HOUR) / n, "latency_s": 0.5, "ttft_s": None,
            "input_tokens": 1000 + i, "output_tokens": 100 + i, "cache_read_tokens": 30 * i,
            "cache_write_tokens": 5 * i, "reasoning_tokens": 0, "usage_estimated": False,
            "cost_usd": None if model == "unknown-model" else 0.001 * (i + 1),
            "unpriced": model == "unknown-model",
        }  # fmt: skip
        rows.append(tuple(attempt[c] for c in ATTEMPT_FIELDS))
    store.record_attempt_rows("toy", RUN, rows)


def _costs(lab: Path, env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    result = run_cli("costs", str(lab), *args, env=env)
    assert result.returncode == 0, result.stderr
    return result


def _imported(lab: Path, env: dict[str, str], *args: str) -> set[str]:
    """The modules `overnight costs ARGS` imports (`python -X importtime`)."""
    done = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "overnight", "costs", str(lab), *args],
        capture_output=True, text=True, env={**os.environ, **env}, timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    return {line.split("|")[-1].strip() for line in done.stderr.splitlines() if "|" in line}


def _without_clock(text: str) -> str:
    """JSON text without its `at` line (the moment it was asked)."""
    return "\n".join(line for line in text.splitlines() if not line.startswith('  "at": '))


def test_the_quick_answer_is_the_app_s_and_imports_none_of_the_heavy_modules(
    night: tuple[Path, dict[str, str]],
) -> None:
    lab, env = night
    # the first answer validates overnight.toml (the app's) and saves its costs' part
    assert not (lab / ".overnight" / "costs-config.json").exists()
    first = _costs(lab, env, "--json")
    assert (lab / ".overnight" / "costs-config.json").is_file()
    assert not NOT_IMPORTED & _imported(lab, env, "--json")  # the next ones are quick's
    quick = _costs(lab, env, "--json")
    assert _without_clock(quick.stdout) == _without_clock(first.stdout)
    assert (quick.stderr, first.stderr) == ("", "")
    data = json.loads(quick.stdout)
    assert data["total"]["attempts"] == 60 and data["anomalies"] and data["forecasts"]
    assert [b["who"] for b in data["forecast"]["budgets"]] == ["org", "org", *AGENTS]
    # the terminal's table too
    (lab / ".overnight" / "costs-config.json").unlink()
    assert _costs(lab, env).stdout == _costs(lab, env).stdout
    assert not NOT_IMPORTED & _imported(lab, env)


def test_a_snapshot_reads_what_the_store_reads_new_attempts_folded_in(
    night: tuple[Path, dict[str, str]],
) -> None:
    """The reader `overnight costs` uses against the Store's, at one clock, attempts folded
    in by either."""
    lab, env = night
    url = env.get("OVERNIGHT_DB") or lab_store_url(lab)
    org = load_org(lab)
    text = config_bytes(lab)
    assert text is not None
    save(lab, text, org.config)
    config = saved(lab, text)
    assert config is not None
    store = open_store(url)
    assert isinstance(store, SqlStore)
    try:
        run = store.latest_run("toy")
        assert run is not None
        now = time.time() - 25 * HOUR  # inside the attempts' hours: the burn is not nil
        before = overview(store, org.config, run, now=now).as_dict()
        _attempts(store, time.time() - 30 * HOUR, 40, tag="b")  # for the snapshot to fold
        with open_snapshot(url) as snapshot:  # type: ignore[union-attr]
            assert snapshot.latest_run("toy") == run
            quick = overview(snapshot, config, run, now=now).as_dict()
        app = overview(store, org.config, run, now=now).as_dict()
    finally:
        store.close()
    assert quick == app
    assert app["total"]["attempts"] == before["total"]["attempts"] + 40
    assert app["forecast"]["burn_usd_per_h"] > 0 and app["advice"]


def test_a_config_edited_or_broken_since_is_read_again(
    night: tuple[Path, dict[str, str]],
) -> None:
    lab, env = night
    assert _budget(_costs(lab, env, "--json")) == 50.0
    config = lab / "overnight.toml"
    config.write_text(CONFIG.replace("total_usd = 50", "total_usd = 70"))
    assert _budget(_costs(lab, env, "--json")) == 70.0
    config.write_text(CONFIG.replace('goal = "maximize"', 'goal = "maximise"'))
    broken = _costs(lab, env, "--json")
    assert "warning:" in broken.stderr and "lab.goal" in broken.stderr
    assert _budget(broken) is None  # the run recorded its lab, not its gateway
    config.write_text(CONFIG)
    assert _budget(_costs(lab, env, "--json")) == 50.0
    (lab / "program.md").unlink()
    assert "program file" in _costs(lab, env, "--json").stderr


def _budget(result: subprocess.CompletedProcess[str]) -> float | None:
    budgets = json.loads(result.stdout)["forecast"]["budgets"]
    return next((b["limit_usd"] for b in budgets if (b["who"], b["period"]) == ("org", "total")),
                None)  # fmt: skip


def test_the_errors_are_the_app_s(night: tuple[Path, dict[str, str]], tmp_path: Path) -> None:
    lab, env = night
    _costs(lab, env, "--json")  # a saved config: quick would answer
    nowhere = run_cli("costs", str(tmp_path / "nowhere"), "--json", env=env)
    assert nowhere.returncode == 2
    assert nowhere.stderr.startswith(f"error: {tmp_path / 'nowhere' / 'overnight.toml'}: no ")
    usage = run_cli("costs", str(lab), "--json", "--bogus", env=env)
    assert usage.returncode == 2 and "No such option: --bogus" in usage.stderr
    helped = run_cli("costs", "--help", env=env)
    assert helped.returncode == 0 and "--json" in helped.stdout


def test_a_lab_being_written_gives_a_whole_answer_each_time(
    night: tuple[Path, dict[str, str]],
) -> None:
    """Attempts written in batches of 10 (one transaction each) while `overnight costs`
    reads: every answer holds whole batches, never fewer than the answer before."""
    lab, env = night
    _costs(lab, env, "--json")
    stop = threading.Event()
    written: list[int] = []

    def write() -> None:
        store = open_store(env.get("OVERNIGHT_DB") or lab_store_url(lab))
        try:
            while not stop.is_set():
                _attempts(store, time.time() - 3 * HOUR, 10, tag=f"w{len(written)}-")
                written.append(10)
        finally:
            store.close()

    writer = threading.Thread(target=write)
    writer.start()
    try:
        seen = []
        for _ in range(6):
            seen.append(json.loads(_costs(lab, env, "--json").stdout)["total"]["attempts"])
    finally:
        stop.set()
        writer.join(timeout=60)
    assert all((n - 60) % 10 == 0 for n in seen), seen
    assert seen == sorted(seen) and seen[-1] > 60, seen
