"""Cost intelligence: `overnight costs`, the forecast, anomalies that pause an agent.

The lab tests drive the real `overnight run` CLI on a throwaway git lab whose
[gateway] points at an in-process fake provider with scripted replies and usage
(OpenAI for `llm` agents; Anthropic for the real Claude Code CLI, which the anomaly
test makes loop on a failing tool call); what they check is what a user sees:
`overnight costs` (and `--json`), `overnight status`, the command center, the
events, the agents' states, and the requests the provider got. The statistic is
tested on its own too.
"""

from __future__ import annotations

import itertools
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from overnight.costs.anomaly import MIN_HISTORY, RESUMED, Anomaly, RunWatch, Watch, bar
from overnight.proposers.edits import Edit, render
from overnight.records import Event, Trial, TrialStatus
from overnight.sessions import wait_until
from overnight.store import open_store, store_url
from overnight.testing import FakeProvider, Reply, ToolCall, Usage
from overnight.testing.store_contract import attempt_row
from tests.helpers.agents import claude_lab
from tests.helpers.labs import TOY_KNOBS, TUNER, make_lab
from tests.helpers.processes import OVERNIGHT, run_cli, started

SCRIPT = """\
X = 0.5
Z = 1
print(f"score: {(X - 3) ** 2}")
"""

CONFIG = """\
[lab]
name = "toy"
editable = ["exp.py"]
protected = ["judge.py"]
run = "{python} exp.py"
metric = "score"
budget = "20s"
grace = "5s"

[[knobs]]
name = "X"
file = "exp.py"
low = -5
high = 5

[[agents]]
name = "tuner"

[[agents]]
name = "coder"
runtime = "llm"
model = "smart"
on_anomaly = "{on_anomaly}"

[gateway]
port = 0

[[gateway.upstreams]]
name = "primary"
protocol = "openai"
base_url = "{url}/v1"
credentials = [{{ name = "main", env = "FAKE_OPENAI_KEY" }}]

[gateway.models]
smart = ["primary/gpt-fake-1"]

[gateway.prices.gpt-fake-1]
input = 2.0
output = 10.0
cache_read = 0.5

[gateway.budgets]
org = {{ total_usd = 50 }}
"""

ENV = {"FAKE_OPENAI_KEY": "sk-upstream"}
# Z is not in the score: the change always applies and is never better (discarded)
SAME = render("nudge Z", [Edit("exp.py", "Z = 1\n", "Z = 2\n")])
USAGE = Usage(input_tokens=1000, output_tokens=200, cache_read_tokens=3000)


@pytest.fixture
def fake() -> Iterator[FakeProvider]:
    with FakeProvider("openai") as fp:
        yield fp


def _lab(tmp_path: Path, fake: FakeProvider, on_anomaly: str = "notify") -> Path:
    config = CONFIG.format(python=sys.executable, url=fake.url, on_anomaly=on_anomaly)
    return make_lab(tmp_path / "lab", config=config, script=SCRIPT)


def _read(lab: Path) -> tuple[list[Trial], list[Event], list[dict[str, object]]]:
    store = open_store(store_url(lab))
    try:
        run = store.latest_run("toy")
        assert run is not None
        return (
            store.trials(run.id),
            store.events(run.id, limit=100_000),
            store.attempts("toy", limit=100_000),
        )
    finally:
        store.close()


def test_costs_shows_spend_per_agent_route_and_day_with_cache_savings(
    tmp_path: Path, fake: FakeProvider
) -> None:
    fake.enqueue(*[Reply(text=SAME, usage=USAGE)] * 8)  # enough for every trial
    lab = _lab(tmp_path, fake)
    result = run_cli("run", str(lab), "--trials", "8", env=ENV)
    assert result.returncode == 0, result.stdout + result.stderr

    trials, _events, attempts = _read(lab)
    coder = [t for t in trials if t.agent == "coder" and t.status.final]
    assert coder and all(t.status is TrialStatus.discarded for t in coder)
    # the run kept its config's costs' part: `overnight costs` answers quickly at once
    assert (lab / ".overnight" / "costs-config.json").is_file()
    data = json.loads(run_cli("costs", str(lab), "--json").stdout)
    # each reply: 1000 input at $2/M, 3000 cached at $0.5/M, 200 output at $10/M
    each = (1000 * 2 + 3000 * 0.5 + 200 * 10) / 1e6
    assert len(attempts) == len(coder)
    assert data["total"]["requests"] == len(coder)
    assert data["total"]["usd"] == pytest.approx(each * len(coder))
    assert data["total"]["cache_share"] == pytest.approx(0.75)
    assert data["total"]["cache_saved_usd"] == pytest.approx(3000 * 1.5 / 1e6 * len(coder))
    agents = {a["name"]: a for a in data["agents"]}
    assert agents["coder"]["runtime"] == "llm"
    assert agents["coder"]["trials"] == len(coder)
    assert agents["coder"]["keeps"] == 0 and agents["coder"]["usd_per_keep"] is None
    assert agents["coder"]["usd_per_trial"] == pytest.approx(each)
    assert agents["coder"]["tokens_per_usd"] == pytest.approx(4200 / each, rel=1e-3)
    assert agents["tuner"]["usd"] == 0 and agents["tuner"]["trials"] >= 1
    assert set(data["routes"]) == {"smart"} and set(data["models"]) == {"primary/gpt-fake-1"}
    assert sum(d["usd"] for d in data["days"].values()) == pytest.approx(each * len(coder))
    (org,) = data["forecast"]["budgets"]
    assert (org["who"], org["period"], org["limit_usd"]) == ("org", "total", 50.0)
    assert org["spent_usd"] == pytest.approx(each * len(coder))
    assert data["forecast"]["until"] is None  # --trials, not --for: no deadline
    assert data["anomalies"] == []

    shown = run_cli("costs", str(lab))
    assert shown.returncode == 0, shown.stderr
    assert "spent $" in shown.stdout and "route smart" in shown.stdout
    assert "budget org total" in shown.stdout


def test_a_deadline_gives_a_forecast_for_the_run_s_end(tmp_path: Path, fake: FakeProvider) -> None:
    fake.enqueue(*[Reply(text=SAME, usage=USAGE)] * 3)
    lab = _lab(tmp_path, fake)
    result = run_cli("run", str(lab), "--trials", "4", "--for", "1h", env=ENV)
    assert result.returncode == 0, result.stdout + result.stderr
    data = json.loads(run_cli("costs", str(lab), "--json").stdout)
    fc = data["forecast"]
    assert fc["until"] is not None and fc["burn_usd_per_h"] > 0
    # spend goes on at the burn rate until the deadline, about an hour away
    assert fc["at_end_usd"] > fc["spent_usd"] + 0.5 * fc["burn_usd_per_h"]
    (org,) = fc["budgets"]
    assert org["runs_out_at"] is not None


def test_the_night_s_forecasts_are_recorded_and_the_report_holds_them_against_the_actual(
    tmp_path: Path, fake: FakeProvider
) -> None:
    fake.enqueue(*[Reply(text=SAME, usage=USAGE)] * 400)
    lab = _lab(tmp_path, fake)
    log = tmp_path / "run.log"
    with log.open("w") as output, started(
        [*OVERNIGHT, "run", str(lab), "--for", "15s"], env={**os.environ, **ENV},
        stdout=output, stderr=subprocess.STDOUT, text=True,
    ) as proc:  # fmt: skip
        url_file = lab / ".overnight" / "web.url"
        wait_until(lambda: url_file.is_file() or proc.poll() is not None, timeout=60)
        # a forecast every tenth of the 15 s: the Costs page draws them while it runs
        wait_until(lambda: len(_events(lab, "cost.forecast")) >= 2 or proc.poll() is not None,
                   timeout=120)  # fmt: skip
        url = url_file.read_text().strip()
        base, token = url.split("/?", 1)[0], url.split("token=", 1)[1]
        with httpx.Client(base_url=base, timeout=30) as client:
            client.get(f"/?token={token}", follow_redirects=False)
            assert 'class="forecast-history"' in client.get("/costs").text
        wait_until(lambda: proc.poll() is not None, timeout=180)  # the deadline ends it
    assert proc.returncode == 0, log.read_text()

    recorded = _events(lab, "cost.forecast")
    assert len(recorded) >= 4, log.read_text()
    gaps = [b.at - a.at for a, b in itertools.pairwise(recorded)]
    assert min(gaps) >= 1.4  # 1.5 s apart at least (the supervisor looks about once a second)
    spent = [e.payload["spent_usd"] for e in recorded]
    assert spent == sorted(spent) and spent[-1] > 0
    (until,) = {e.payload["until"] for e in recorded}  # the deadline `--for` set
    assert all(e.payload["at_end_usd"] >= e.payload["spent_usd"] for e in recorded)
    data = json.loads(run_cli("costs", str(lab), "--json").stdout)
    assert [f["spent_usd"] for f in data["forecasts"]] == spent
    assert data["forecasts"][0]["until"] == until

    # the morning report: each forecast, taken to the run's end at its rate, against the
    # actual spend there
    text = Path(log.read_text().split("report: ", 1)[1].split(" ", 1)[0]).with_suffix(".md")
    report = text.read_text()
    assert "Forecast against actual" in report
    table = report.split("Forecast against actual", 1)[1].split("\n\n", 2)[1]
    rows = [line.split(" | ") for line in table.splitlines()[2:]]
    assert len(rows) == len(recorded)
    assert rows[0][1] == f"${spent[0]:.4f}" and rows[-1][1] == f"${spent[-1]:.4f}"
    assert all(row[-1].rstrip(" |").endswith("%") for row in rows)  # off by, in percent
    assert f"against the ${data['total']['usd']:.4f} spent by then" in report


def _events(lab: Path, kind: str | None = None) -> list[Event]:
    return [e for e in _read(lab)[1] if kind in (None, e.kind)]


LOOP = (
    'python3 -c "import re, sys; sys.exit(None if re.search('
    "r'^score: (0+)+\\.0{40}$', open('exp.py').read(), re.M) else 'no match')\""
)
"""The million-dollar regex: what the looping agent runs again and again. It never matches,
so the command fails, and the model asks for it once more. (Not grep: Claude Code takes
grep's and test's exit status 1 for "no", not for a failure.)"""


def _submit(x: float) -> ToolCall:
    command = f"sed -i 's/^X = .*/X = {x}/' exp.py && overnight try 'X={x}'"
    return ToolCall("Bash", {"command": command, "description": "submit"})


def _requests(fake: FakeProvider) -> list[dict[str, Any]]:
    return [r for r in fake.requests if r["path"] == "/v1/messages"]


def test_claude_code_looping_on_a_failing_tool_call_is_caught_and_paused_and_the_others_go_on(
    tmp_path: Path,
) -> None:
    # Claude Code submits MIN_HISTORY trials with one request each (its history of requests
    # per turn: 1, 1, 1, 1, 1), then runs the same failing regex check on every reply, forever.
    history = [Reply(tool_calls=[_submit(1 + n / 2)], usage=USAGE) for n in range(MIN_HISTORY)]
    loop = [Reply(tool_calls=[ToolCall("Bash", {"command": LOOP})], usage=USAGE)] * 500
    with FakeProvider("anthropic", script=[*history, *loop], mode="conversation") as fake:
        lab, env = claude_lab(
            tmp_path,
            fake,
            lab={"parallel": 2, "min_delta": 0},  # (no noise floor to measure first)
            knobs=TOY_KNOBS,
            others=[TUNER],
            gateway={"prices": {"claude-fake-1": {"input": 2.0, "output": 10.0}}},
            on_anomaly="pause",
        )
        argv = [*OVERNIGHT, "run", str(lab), "--for", "10m"]
        with started(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True):
            wait_until((lab / ".overnight" / "web.url").is_file, timeout=60)
            wait_until(lambda: _paused(lab) is not None, timeout=120)
            paused_at = _paused(lab)
            assert paused_at is not None
            held = len(_requests(fake))
            first, *_more = _events(lab, "cost.anomaly")
            assert first.agent == "claude" and first.payload["measure"] in ("requests", "tokens")
            # the history's median is 1 and its MAD 0, so the bar is 1 + 5 x 0.25 x 1 = 2.25
            # requests (or the tokens of 2.25 requests): the looping turn is caught at its 3rd
            assert first.payload["threshold"] == pytest.approx(2.25 * first.payload["median"])
            assert first.payload["requests"] == 3
            assert first.payload["pause"] is True and "cost anomaly" in first.payload["title"]
            looped = held - MIN_HISTORY  # 3, and any made before the supervisor's next look
            assert 3 <= looped < len(loop), "the loop was stopped, not run out"
            results = [
                block
                for message in _requests(fake)[-1]["body"]["messages"]
                if isinstance(message["content"], list)
                for block in message["content"]
                if block.get("type") == "tool_result"
            ]
            assert results[-1].get("is_error") is True  # the check failed; the model was told
            (stopped,) = _events(lab, "agent.turn_stopped")
            assert stopped.agent == "claude" and "cost anomaly" in stopped.payload["reason"]

            def tuned() -> int:
                return len([t for t in _read(lab)[0] if t.agent == "t" and t.status.final])

            tuner = tuned()
            # `overnight status` shows it paused, and where the spending is heading
            status = json.loads(run_cli("status", str(lab), "--json").stdout)
            (claude,) = [a for a in status["agents"] if a["name"] == "claude"]
            assert claude["state"] == "paused"
            assert status["forecast"]["until"] is not None
            assert status["forecast"]["at_end_usd"] >= status["forecast"]["spent_usd"] > 0
            data = json.loads(run_cli("costs", str(lab), "--json").stdout)
            assert data["anomalies"][0]["agent"] == "claude"
            # meanwhile the tuner went on, and Claude Code made no request any more
            wait_until(lambda: tuned() >= tuner + 2, timeout=60)
            assert len(_requests(fake)) == held
            trials = _read(lab)[0]
            assert [t for t in trials if t.agent == "claude" and t.created_at > paused_at] == []
            assert {e.agent for e in _events(lab, "cost.anomaly")} == {"claude"}  # nobody else
            # a person resumes it from the command center: its conversation goes on, told why
            url = (lab / ".overnight" / "web.url").read_text().strip()
            base, token = url.split("/?", 1)[0], url.split("token=", 1)[1]
            with httpx.Client(base_url=base, timeout=30) as client:
                assert client.get(f"/?token={token}", follow_redirects=False).status_code == 303
                page = client.get("/").text
                csrf = page.split('name="csrf-token" content="', 1)[1].split('"', 1)[0]
                # the Costs page: spend over time per agent, the forecast, the anomaly marked
                costs = client.get("/costs")
                assert costs.status_code == 200
                assert 'class="spend"' in costs.text and 'data-agent="claude"' in costs.text
                assert 'class="forecast"' in costs.text and 'class="anomaly"' in costs.text
                assert "cost anomaly: agent claude" in costs.text and "<b>paused</b>" in costs.text
                r = client.post("/agents/claude/resume", headers={"x-csrf-token": csrf})
                assert r.status_code == 204, r.text
            wait_until(lambda: len(_requests(fake)) > held, timeout=60)
            assert "overnight stopped your previous turn" in json.dumps(
                _requests(fake)[held]["body"]["messages"][-1]
            )
    print(f"the looping turn made {looped} requests before the pause stopped it")


def _paused(lab: Path) -> float | None:
    """When the agent claude's process recorded it paused, if it has."""
    states = [e for e in _events(lab, "agent.state") if e.agent == "claude"]
    return states[-1].at if states and states[-1].payload["state"] == "paused" else None


def test_the_bar_is_the_median_plus_five_robust_deviations() -> None:
    level = bar([10, 12, 11, 50, 9, 10])
    assert level is not None
    assert level.median == 10.5  # the spike of 50 does not move it
    assert level.threshold == pytest.approx(10.5 + 5 * max(1.4826 * 1.0, 0.25 * 10.5))
    assert bar([1, 1, 1, 1]) is None  # too little history to judge


def test_a_turn_is_flagged_once_per_measure_and_joins_the_history_when_over() -> None:
    watch = Watch()
    row = {"agent": "a", "attempt": 1, "input_tokens": 100, "started_at": 0.0, "cost_usd": 0.0}
    for n in range(MIN_HISTORY):
        assert watch.attempt({**row, "trial": str(n)}) == []
    watch.turn_over("a")
    caught = [a for _ in range(5) for a in watch.attempt({**row, "trial": "9"})]
    assert [(a.measure, a.requests) for a in caught] == [("requests", 3), ("tokens", 3)]


def test_a_loop_after_a_person_s_resume_is_caught_again(tmp_path: Path) -> None:
    # the supervisor's watch, fed from the store: an agent in a terminal loops on untagged
    # calls (Claude Code's, between two `overnight try`s), is caught and paused; a person
    # resumes it, and its conversation loops again
    store = open_store(f"sqlite:///{tmp_path / 'lab.db'}")
    try:
        store.create_run("r1", "toy", "0" * 40, {}, {})
        watch = RunWatch(store, "toy", "r1")

        def call(trial: str | None = None) -> list[Anomaly]:
            store.record_attempts(
                "toy", "r1", [attempt_row("claude", 0.01, time.time(), trial=trial)]
            )
            return watch.poll()

        for n in range(MIN_HISTORY):
            assert call(trial=str(n)) == []
            store.append_event("r1", "trial.discarded", {}, agent="claude")
        looped = [call() for _ in range(4)]
        assert [[a.measure for a in c] for c in looped] == [[], [], ["requests", "tokens"], []]
        store.append_event("r1", RESUMED, {}, agent="claude")  # what the command center records
        again = [call() for _ in range(4)]
        # a fresh turn: caught at its 3rd request again (the history's median is still 1:
        # the stopped turn's 4 requests joined it and did not move it)
        assert [[(a.measure, a.requests) for a in c] for c in again] == [
            [],
            [],
            [("requests", 3), ("tokens", 3)],
            [],
        ]
    finally:
        store.close()


CHROMIUM = Path("/usr/bin/chromium")
DOCS = Path(__file__).resolve().parent.parent / "docs"


def test_the_morning_report_is_written_at_the_run_s_end_and_reads_in_a_browser(
    tmp_path: Path, fake: FakeProvider
) -> None:
    better = render("move X to 3", [Edit("exp.py", "X = 0.5\n", "X = 3\n")])
    fake.enqueue(Reply(text=better, usage=USAGE), *[Reply(text=SAME, usage=USAGE)] * 3)
    lab = _lab(tmp_path, fake)
    result = run_cli("run", str(lab), "--trials", "6", env=ENV)
    assert result.returncode == 0, result.stdout + result.stderr
    said = result.stdout.split("report: ", 1)[1].split(" ", 1)[0]
    page, markdown = Path(said), Path(said).with_suffix(".md")
    assert page.suffix == ".html" and markdown.is_file()
    text = markdown.read_text()
    for heading in ("## Progress", "## Kept changes", "## Agents", "## Incidents", "## Costs",
                    "## For the next night"):  # fmt: skip
        assert heading in text, heading
    assert "-X = 0.5\n+X = 3" in text  # the cumulative diff
    assert "wall time:" in text and "spent: $" in text
    # on demand too, to a file of one's own
    mine = tmp_path / "night.html"
    assert run_cli("report", str(lab), "--out", str(mine)).returncode == 0
    assert mine.is_file() and mine.with_suffix(".md").is_file()

    from playwright.sync_api import sync_playwright

    if not CHROMIUM.is_file():
        pytest.fail("Debian's chromium is missing: run `make system-deps`", pytrace=False)
    with sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path=str(CHROMIUM), headless=True,
            args=["--headless", "--no-sandbox", "--disable-gpu"],
        )  # fmt: skip
        try:
            view = browser.new_page(viewport={"width": 1200, "height": 900})
            requests: list[str] = []
            view.on("request", lambda r: requests.append(r.url))
            view.goto(page.as_uri())
            for section in ("progress", "kept-changes", "agents", "incidents", "costs",
                            "for-the-next-night"):  # fmt: skip
                assert view.locator(f"#{section}").is_visible(), section
            assert view.locator("img[alt=progress]").evaluate("i => i.naturalWidth") > 100
            assert "coder" in view.locator("#agents + table").inner_text()
            assert "smart" in view.locator("#costs ~ table").first.inner_text() or (
                "smart" in view.content()
            )
            # self-contained: nothing but the file itself (and its inlined plot) is loaded
            assert [u for u in requests if not u.startswith(("file:", "data:"))] == []
            DOCS.mkdir(exist_ok=True)
            view.screenshot(path=str(tmp_path / "report.png"), full_page=False)
        finally:
            browser.close()
    assert (tmp_path / "report.png").stat().st_size > 10_000


UNUSABLE = Reply(tool_calls=[ToolCall("run_tests", {"path": "exp.py"})], usage=USAGE)
"""A model calling a tool the `llm` runtime does not offer: no DESCRIPTION, no edit, so the
runtime asks again in the same trial, at most 1 + MAX_REASKS = 3 times, and the trial
crashes. (The fake's default answer when its queue is empty, "ok", is no more usable.)"""


def _chat(fake: FakeProvider) -> list[dict[str, Any]]:
    return [r for r in fake.requests if r["path"] == "/v1/chat/completions"]


def _agent(lab: Path, name: str) -> dict[str, Any]:
    status = json.loads(run_cli("status", str(lab), "--json").stdout)
    return next(a for a in status["agents"] if a["name"] == name)


def test_an_llm_agent_asking_again_and_again_is_held_at_its_next_trial_until_resumed(
    tmp_path: Path, fake: FakeProvider
) -> None:
    # MIN_HISTORY trials of one request each (its history of requests per trial: 1, 1, 1,
    # 1, 1), then a model whose every answer is unusable: each trial asks three times
    fake.enqueue(*[Reply(text=SAME, usage=USAGE)] * MIN_HISTORY, *[UNUSABLE] * 3)
    lab = _lab(tmp_path, fake, on_anomaly="pause")
    argv = [*OVERNIGHT, "run", str(lab), "--for", "5m"]
    env = {**os.environ, **ENV}
    with started(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True):
        wait_until((lab / ".overnight" / "web.url").is_file, timeout=60)
        wait_until(lambda: _agent(lab, "coder")["state"] == "paused", timeout=60)
        held = len(_chat(fake))
        first, *_more = _events(lab, "cost.anomaly")
        # the median is 1 and the MAD 0, so the bar is 1 + 5 x 0.25 x 1 = 2.25 requests: the
        # first looping trial is caught at its 3rd request (and its 3 x 4200 tokens too)
        assert first.agent == "coder" and first.payload["measure"] == "requests"
        assert (first.payload["threshold"], first.payload["requests"]) == (2.25, 3)
        assert first.payload["pause"] is True
        assert first.payload["title"] == "cost anomaly: agent coder's requests per turn"
        coder = [t for t in _read(lab)[0] if t.agent == "coder"]
        looping = [t for t in coder if t.status is TrialStatus.crashed]
        assert coder[:MIN_HISTORY] == coder[: -len(looping)] and int(first.payload["trial"]) in {
            t.number for t in looping
        }
        # held at a trial's end: whole trials of three requests, and none started once the
        # anomaly was recorded but the one already under way (the looping trials before it:
        # those started before the supervisor's next look, about a second)
        assert held == MIN_HISTORY + 3 * len(looping)
        assert len([t for t in looping if t.created_at > first.at]) <= 1
        status = _agent(lab, "coder")
        assert status["reason"].startswith("paused for a cost anomaly: agent coder: requests")
        assert "paused for a cost anomaly" in run_cli("status", str(lab)).stdout

        def tuned() -> int:
            return len([t for t in _read(lab)[0] if t.agent == "tuner" and t.status.final])

        # meanwhile the tuner goes on, and the model hears nothing more from the coder
        tuner = tuned()
        wait_until(lambda: tuned() >= tuner + 2, timeout=60)
        assert len(_chat(fake)) == held
        assert len([t for t in _read(lab)[0] if t.agent == "coder"]) == len(coder)
        assert {e.agent for e in _events(lab, "cost.anomaly")} == {"coder"}  # nobody else

        # the model is fixed; a person resumes the coder from the command center
        fake.enqueue(*[Reply(text=SAME, usage=USAGE)] * 100)
        url = (lab / ".overnight" / "web.url").read_text().strip()
        base, token = url.split("/?", 1)[0], url.split("token=", 1)[1]
        flagged = len(_events(lab, "cost.anomaly"))
        with httpx.Client(base_url=base, timeout=30) as client:
            assert client.get(f"/?token={token}", follow_redirects=False).status_code == 303
            csrf = client.get("/").text.split('name="csrf-token" content="', 1)[1].split('"')[0]
            r = client.post("/agents/coder/resume", headers={"x-csrf-token": csrf})
            assert r.status_code == 204, r.text

        def after() -> list[Trial]:
            return [t for t in _read(lab)[0] if t.agent == "coder" and t.status.final][len(coder) :]

        # its trials go on, one request each: the looping trials in its history do not
        # move the median, so nothing is flagged (and it is not paused again)
        wait_until(lambda: len(after()) >= 3, timeout=60)
        assert all(t.status is TrialStatus.discarded for t in after())
        assert len(_events(lab, "cost.anomaly")) == flagged
        assert _agent(lab, "coder")["state"] == "working"
    print(f"the looping trials made {held - MIN_HISTORY} requests before the pause held them")
