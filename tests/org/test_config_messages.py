"""Every mistake answered in one message: a table of broken labs and mistyped commands,
each through the real CLI, each answered with where, what and how to fix it."""

from __future__ import annotations

import faulthandler
import signal
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from overnight import __version__
from overnight.errors import ConfigError
from overnight.org import parse_config
from tests.helpers.labs import make_lab
from tests.helpers.processes import run_cli

# Line numbers below refer to this file.
BASE = f"""\
[lab]
name = "toy"
editable = ["exp.py"]
protected = ["judge.py"]
run = "{sys.executable} exp.py"
metric = "score"
budget = "20s"
grace = "5s"

[[knobs]]
name = "X"
file = "exp.py"
low = -5
high = 5

[[agents]]
name = "t"
"""

GATEWAY = """
[gateway]
[[gateway.upstreams]]
name = "local"
protocol = "openai"
base_url = "http://127.0.0.1:9"
"""  # the [gateway] header is on line 19, the upstream's name on line 21


@dataclass(frozen=True)
class Broken:
    """A change to BASE, and where and what the message must say."""

    old: str  # replaced by `new`; empty: `new` is added at the end
    new: str
    where: str  # "line: field", or "line:" for a mistake no field owns (TOML syntax)
    says: tuple[str, ...]


def _lab_line(text: str) -> tuple[str, str]:
    """A change that adds `text` as the last line of [lab] (line 9)."""
    return 'grace = "5s"\n', f'grace = "5s"\n{text}\n'


CASES = {
    # the typo is named, on its own line, not the field it was meant to be
    "a misspelt field": Broken(
        "editable =",
        "editabel =",
        "3: lab.editabel",
        ("unknown field 'editabel'", "did you mean 'editable'?"),
    ),
    "a misspelt table": Broken(
        "[lab]", "[labb]", "1: labb", ("unknown table 'labb'", "did you mean 'lab'?")
    ),
    "a field under the wrong header": Broken(
        "",
        "parallel = 2\n",
        "18: agents[0].parallel",
        ("unknown field 'parallel'", "belongs in [lab]"),
    ),
    "an unknown field, no near miss": Broken(
        *_lab_line("colour = 1"),
        "9: lab.colour",
        ("unknown field 'colour'", "remove it", "editable"),
    ),
    "an unknown table": Broken(
        "", "\n[colours]\ntext = 1\n", "19: colours", ("unknown table 'colours'", "remove it")
    ),
    "no [lab] header": Broken(
        "[lab]\n", "", "1: name", ("unknown field 'name'", "belongs in [lab]")
    ),
    "a required field missing": Broken(
        'metric = "score"\n',
        "",
        "1: lab.metric",
        ("metric is required", 'add metric = "..." to [lab]'),
    ),
    # values out of range, in the user's words, with the allowed range
    "parallel = 0": Broken(
        *_lab_line("parallel = 0"),
        "9: lab.parallel",
        ("must be at least 1 (got 0)", "from 1 to 64"),
    ),
    "confirm_runs = 11": Broken(
        *_lab_line("confirm_runs = 11"), "9: lab.confirm_runs", ("must be at most 10 (got 11)",)
    ),
    "min_delta below 0": Broken(
        *_lab_line("min_delta = -0.1"),
        "9: lab.min_delta",
        ("must be at least 0", "min_delta = 0 or more"),
    ),
    # keeps that can be trusted: the noise floor and the hidden holdout
    'min_delta = "sometimes"': Broken(
        *_lab_line('min_delta = "sometimes"'),
        "9: lab.min_delta",
        ("'sometimes' is neither a number nor \"auto\"", '"auto" to measure the noise'),
    ),
    "noise_runs = 1": Broken(
        *_lab_line("noise_runs = 1"),
        "9: lab.noise_runs",
        ("must be at least 2 (got 1)", "from 2 to 20"),
    ),
    "a holdout without hidden files": Broken(
        *_lab_line('holdout = "python holdout_eval.py"'),
        "9: lab.holdout",
        ("holdout is set and hidden is empty", 'hidden = ["holdout_eval.py", "holdout/**"]'),
    ),
    "hidden files without a holdout": Broken(
        *_lab_line('hidden = ["holdout/**"]'),
        "9: lab.hidden",
        ("hidden is set, and there is no holdout", 'add holdout = "python holdout_eval.py"'),
    ),
    "a holdout metric without a holdout": Broken(
        *_lab_line('holdout_metric = "holdout_loss"'),
        "9: lab.holdout_metric",
        ("holdout_metric is set, and there is no holdout",),
    ),
    'on_divergence = "maybe"': Broken(
        *_lab_line('on_divergence = "maybe"'),
        "9: lab.on_divergence",
        ("'maybe' is not one of: flag, reject, review",),
    ),
    "a hidden file that is editable": Broken(
        *_lab_line('holdout = "python holdout_eval.py"\nhidden = ["exp.py"]'),
        "10: lab.hidden[0]",
        ("'exp.py' is hidden, and editable has 'exp.py' too", "remove 'exp.py' from hidden"),
    ),
    "a hidden path outside the lab": Broken(
        *_lab_line('holdout = "python holdout_eval.py"\nhidden = ["../data/*.csv"]'),
        "10: lab.hidden[0]",
        ("'../data/*.csv' is not a path inside the lab", "relative to overnight.toml"),
    ),
    "a hidden glob that matches a committed file": Broken(
        *_lab_line(f'holdout = "{sys.executable} exp.py"\nhidden = ["program.md"]'),
        "10: lab.hidden[0]",
        ("'program.md' hides program.md, which is committed", "git rm --cached program.md"),
    ),
    "a hidden glob that matches no file": Broken(
        *_lab_line(f'holdout = "{sys.executable} exp.py"\nhidden = ["holdout/**"]'),
        "10: lab.hidden[0]",
        ("'holdout/**' matches no file", "check the spelling"),
    ),
    # names a lab, metric or knob cannot have
    "a lab name with a space": Broken(
        'name = "toy"',
        'name = "my lab"',
        "2: lab.name",
        ("'my lab' has a character a name cannot have: ' '", "letters, digits", 'name = "my_lab"'),
    ),
    "a metric with a space": Broken(
        'metric = "score"',
        'metric = "val loss"',
        "6: lab.metric",
        ("a metric cannot have", "val_loss"),
    ),
    "a knob name that is no Python name": Broken(
        'name = "X"',
        'name = "1X"',
        "11: knobs[0].name",
        ("'1X' starts with '1'", "starting with a letter or _"),
    ),
    # types
    "a number in quotes": Broken(
        *_lab_line('parallel = "two"'),
        "9: lab.parallel",
        ("must be a whole number (got 'two')", "without quotes"),
    ),
    "a list that is a string": Broken(
        'editable = ["exp.py"]',
        'editable = "exp.py"',
        "3: lab.editable",
        ("must be a list (got 'exp.py')", 'editable = ["exp.py"]'),
    ),
    "an empty list": Broken(
        'editable = ["exp.py"]',
        "editable = []",
        "3: lab.editable",
        ("lists nothing", "list at least 1"),
    ),
    "an empty command": Broken(
        f'run = "{sys.executable} exp.py"', 'run = ""', "5: lab.run", ("run is empty",)
    ),
    "a choice that is not one": Broken(
        *_lab_line('goal = "max"'),
        "9: lab.goal",
        ("'max' is not one of: minimize, maximize", "did you mean 'maximize'?"),
    ),
    "[[agents]] written [agents]": Broken(
        "[[agents]]", "[agents]", "16: agents", ("must be a list of tables", "[[agents]]")
    ),
    "[lab] written [[lab]]": Broken(
        "[lab]", "[[lab]]", "1: lab", ("there is one [lab]", "single brackets")
    ),
    # durations and sizes
    'budget = "abc"': Broken(
        'budget = "20s"', 'budget = "abc"', "7: lab.budget", ("'abc' is not a duration", '"5m"')
    ),
    'grace = "-1s"': Broken(
        'grace = "5s"', 'grace = "-1s"', "8: lab.grace", ("'-1s' is negative",)
    ),
    'budget = "0s"': Broken('budget = "20s"', 'budget = "0s"', "7: lab.budget", ("budget is 0",)),
    'max_log = "lots"': Broken(
        *_lab_line('max_log = "lots"'), "9: lab.max_log", ("'lots' is not a size", '"50MB"')
    ),
    # recorded values and constraints on them
    "a recorded name with a space": Broken(
        *_lab_line('record = ["peak vram"]'),
        "9: lab.record[0]",
        ("'peak vram' is not a name a run prints", 'e.g. "peak_vram"'),
    ),
    "the metric recorded again": Broken(
        *_lab_line('record = ["score"]'), "9: lab.record[0]", ("'score' is the metric",)
    ),
    "a recorded name that is a ledger column": Broken(
        *_lab_line('record = ["memory_gb"]'),
        "9: lab.record[0]",
        ("'memory_gb' is the name of a ledger column", "constraints may name memory_gb"),
    ),
    "a constraint written =<": Broken(
        *_lab_line('record = ["vram"]\nconstraints = ["vram =< 5"]'),
        "10: lab.constraints[0]",
        ("'vram =< 5' uses '=<'", 'write "vram <= 5"'),
    ),
    "a constraint on what is not recorded": Broken(
        *_lab_line('constraints = ["vram <= 5"]'),
        "9: lab.constraints[0]",
        ("on 'vram', which is not recorded", 'record = ["vram"]'),
    ),
    "a constraint that is no bound": Broken(
        *_lab_line('constraints = ["score == 1"]'),
        "9: lab.constraints[0]",
        ("a constraint is a bound", "use <, <=, > or >="),
    ),
    # editable and protected
    "a protected file inside an editable glob": Broken(
        'editable = ["exp.py"]',
        'editable = ["*.py"]',
        "4: lab.protected[0]",
        ("'judge.py' is protected, and the editable glob '*.py' covers it", "narrow '*.py'"),
    ),
    "two globs that meet on a committed file": Broken(
        'editable = ["exp.py"]\nprotected = ["judge.py"]',
        'editable = ["*.py"]\nprotected = ["j*.py"]',
        "4: lab.protected[0]",
        (
            "judge.py is both editable (by '*.py') and protected (by 'j*.py')",
            'editable = ["exp.py"]',
        ),
    ),
    "the same file in both lists": Broken(
        'protected = ["judge.py"]',
        'protected = ["exp.py"]',
        "4: lab.protected[0]",
        ("'exp.py' is both editable and protected",),
    ),
    # knobs
    "a knob with low >= high": Broken(
        "low = -5", "low = 5", "13: knobs[0].low", ("low (5) is not below high (5)",)
    ),
    "a knob with neither range nor choices": Broken(
        "low = -5\nhigh = 5\n",
        "",
        "10: knobs[0]",
        ("neither a range nor choices", "choices = [...]"),
    ),
    "a knob with half a range": Broken(
        "high = 5\n", "", "13: knobs[0].low", ("has low but no high", "add high")
    ),
    "a log knob from 0": Broken(
        "low = -5", "low = 0\nlog = true", "13: knobs[0].low", ("log-scaled", "remove log = true")
    ),
    "a knob named twice": Broken(
        "",
        '\n[[knobs]]\nname = "X"\nfile = "exp.py"\nchoices = [1, 2]\n',
        "20: knobs[1].name",
        ("knob name 'X' is used twice (first on line 11)", "a name of its own"),
    ),
    "a knob with one choice": Broken(
        "low = -5\nhigh = 5",
        "choices = [1]",
        "13: knobs[0].choices",
        ("has 1 choice", "at least two values"),
    ),
    "a choice that is a list": Broken(
        "low = -5\nhigh = 5",
        "choices = [[1], 2]",
        "13: knobs[0].choices[0]",
        ("must be a string in quotes, a number or true/false (got [1])",),
    ),
    # agents
    "an agent named twice": Broken(
        "",
        '\n[[agents]]\nname = "t"\n',
        "20: agents[1].name",
        ("agent name 't' is used twice (first on line 17)",),
    ),
    "an agent named like another's copy": Broken(
        'name = "t"\n',
        'name = "t"\ncount = 2\n\n[[agents]]\nname = "t-2"\n',
        "21: agents[1].name",
        ("'t-2' is also the name of a copy of agent 't'",),
    ),
    "an agent count of 0": Broken(
        'name = "t"\n',
        'name = "t"\ncount = 0\n',
        "18: agents[0].count",
        ("must be at least 1 (got 0)",),
    ),
    "an unknown runtime": Broken(
        'name = "t"\n',
        'name = "t"\nruntime = "optuma"\n',
        "18: agents[0].runtime",
        ("unknown runtime 'optuma'", "optuna"),
    ),
    "an unknown brownout rule": Broken(
        'name = "t"\n',
        'name = "t"\non_brownout = "stop"\n',
        "18: agents[0].on_brownout",
        ("'stop' is not one of: pause, optimize",),
    ),
    "fresh_every below 0": Broken(
        'name = "t"\n',
        'name = "t"\nfresh_every = -1\n',
        "18: agents[0].fresh_every",
        ("must be at least 0 (got -1)", "fresh_every = 0 or more"),
    ),
    "fresh_every in words": Broken(
        'name = "t"\n',
        'name = "t"\nfresh_every = "often"\n',
        "18: agents[0].fresh_every",
        ("must be a whole number (got 'often')", "e.g. fresh_every = 25"),
    ),
    # sharing and stop rules
    "share neither best nor none": Broken(
        *_lab_line('share = "all"'), "9: lab.share", ("'all' is not one of: best, none",)
    ),
    "patience of no trials": Broken(
        *_lab_line("patience = 0"), "9: lab.patience", ("at least 1 (got 0)", "patience = 1")
    ),
    "a target in words": Broken(
        *_lab_line('[lab.stop]\ntarget = "low"'),
        "10: lab.stop.target",
        ("must be a number, the value of the metric to stop at (got 'low')", "target = 0.25"),
    ),
    "a plateau that is neither trials nor time": Broken(
        *_lab_line('[lab.stop]\nplateau = "forever"'),
        "10: lab.stop.plateau",
        ("'forever' is neither a number of trials nor a duration", 'plateau = "40 trials"'),
    ),
    "a plateau as a bare number": Broken(
        *_lab_line("[lab.stop]\nplateau = 40"),
        "10: lab.stop.plateau",
        ("40 is neither a number of trials nor a duration", 'plateau = "2h"'),
    ),
    "a crash streak of none": Broken(
        *_lab_line("[lab.stop]\ncrash_streak = 0"),
        "10: lab.stop.crash_streak",
        ("0 crashes in a row would pause every agent", "leave it out to never pause"),
    ),
    "a stop rule misspelt": Broken(
        *_lab_line("[lab.stop]\ntraget = 0.25"),
        "10: lab.stop.traget",
        ("unknown field 'traget'", "did you mean 'target'?"),
    ),
    # governance
    "review_at above deny_at": Broken(
        "",
        "\n[governance]\nreview_at = 0.9\ndeny_at = 0.5\n",
        "20: governance.review_at",
        ("review_at (0.9) is above deny_at (0.5)",),
    ),
    "a webhook that is no URL": Broken(
        "",
        '\n[governance]\nwebhook = "slack"\n',
        "20: governance.webhook",
        ("'slack' is not an http:// or https:// URL",),
    ),
    'approval_timeout = "0s"': Broken(
        "",
        '\n[governance]\napproval_timeout = "0s"\n',
        "20: governance.approval_timeout",
        ("must be longer than 0 (got '0s')",),
    ),
    # the gateway
    "a route naming an unknown upstream": Broken(
        "",
        GATEWAY + '[gateway.models]\nsmart = ["lcoal/qwen"]\n',
        "25: gateway.models.smart",
        ("names the upstream 'lcoal', and there is none", "did you mean 'local/qwen'?"),
    ),
    "an upstream named twice": Broken(
        "",
        GATEWAY + GATEWAY.replace("[gateway]\n", ""),
        "26: gateway.upstreams[1].name",
        ("upstream name 'local' is used twice (first on line 21)",),
    ),
    "an unknown protocol": Broken(
        "",
        GATEWAY.replace('"openai"', '"gpt"'),
        "22: gateway.upstreams[0].protocol",
        ("'gpt' is not one of: anthropic, openai",),
    ),
    "a base_url without a scheme": Broken(
        "",
        GATEWAY.replace("http://", ""),
        "23: gateway.upstreams[0].base_url",
        ("is not an http:// or https:// URL", 'base_url = "https://'),
    ),
    "a credential without a source": Broken(
        "",
        GATEWAY + '[[gateway.upstreams.credentials]]\nname = "k"\n',
        "24: gateway.upstreams[0].credentials[0]",
        ("credential 'k' has neither env nor file", "env ="),
    ),
    "a budget for an agent that does not run": Broken(
        'name = "t"\n',
        'name = "t"\ncount = 2\n' + GATEWAY + "[gateway.budgets.agents.t]\ntotal_usd = 1\n",
        "25: gateway.budgets.agents.t",
        ("names no agent, so it limits nothing (the agents: t-1, t-2)", "budgets.agents.t-1"),
    ),
    "a port out of range": Broken(
        "",
        "\n[gateway]\nport = 70000\n",
        "20: gateway.port",
        ("must be at most 65535 (got 70000)", "from 0 to 65535"),
    ),
    # [executor]
    "an executor of an unknown kind": Broken(
        "",
        '\n[executor]\nkind = "slurm"\n',
        "20: executor.kind",
        ("'slurm'", "local"),
    ),
    "a Ray address that is not one": Broken(
        "",
        '\n[executor]\nkind = "ray"\naddress = "my cluster"\n',
        "21: executor.address",
        ("'my cluster' is not the address of a Ray cluster", '"HOST:6379"'),
    ),
    "a Ray Client address without its port": Broken(
        "",
        '\n[executor]\nkind = "ray"\naddress = "ray://head"\n',
        "21: executor.address",
        ("'ray://head' is not the address of a Ray cluster", '"ray://HOST:10001"'),
    ),
    "a Ray field on the local executor": Broken(
        "",
        "\n[executor]\nresources = {a100 = 1}\n",
        "20: executor.resources",
        ('resources is for a Ray cluster, but kind is "local"', 'set kind = "ray"'),
    ),
    "a custom resource that reserves nothing": Broken(
        "",
        '\n[executor]\nkind = "ray"\nresources = {a100 = 0}\n',
        "21: executor.resources.a100",
        ("resource 'a100' = 0 reserves nothing", 'resources = {"a100" = 1}'),
    ),
    "a Ray cluster that does not answer": Broken(
        "",
        '\n[executor]\nkind = "ray"\naddress = "127.0.0.1:1"\n',
        "21: executor.address",
        ("no Ray cluster answers at 127.0.0.1:1", "ray start --head"),
    ),
    # TOML itself
    "a string without quotes": Broken(
        'metric = "score"',
        "metric = score",
        "6:",
        ("not valid TOML: invalid value", "strings need quotes"),
    ),
    "a key written twice": Broken(
        'grace = "5s"\n',
        'grace = "5s"\nbudget = "1m"\n',
        "9:",
        ("not valid TOML", "may appear once"),
    ),
}


@pytest.mark.parametrize("case", CASES.values(), ids=CASES.keys())
def test_a_broken_lab_is_answered_with_where_what_and_the_fix(tmp_path: Path, case: Broken) -> None:
    text = BASE + case.new if not case.old else BASE.replace(case.old, case.new, 1)
    assert text != BASE
    lab = make_lab(tmp_path / "lab", config=text)
    result = run_cli("run", str(lab), "--no-ui")
    assert result.returncode == 2, (result.returncode, result.stdout, result.stderr)
    lines = result.stderr.splitlines()
    assert len(lines) == 2, result.stderr  # one message: the problem, then the fix
    line, _, field = case.where.partition(":")
    path = (lab / "overnight.toml").resolve()
    head = f"error: {path}:{line}: " + (f"{field.strip()}: " if field else "")
    assert lines[0].startswith(head), result.stderr
    assert lines[1].startswith("  fix: "), result.stderr
    for words in case.says:
        assert words in result.stderr, f"{words!r} not in:\n{result.stderr}"
    assert not (lab / ".overnight" / "overnight.db").exists()  # refused before any run began


# Every table and most fields, so that a change to any line reaches every model's checks.
EVERYTHING = (
    BASE.replace('name = "t"\n', 'name = "t"\ncount = 2\nbudget = 3.5\nmodel = "smart"\n').replace(
        'grace = "5s"\n',
        'grace = "5s"\nrecord = ["mfu"]\nconstraints = ["mfu <= 50"]\nshare = "best"\npatience = 3\n'
        '[lab.stop]\ntarget = 0.25\nplateau = "40 trials"\ncrash_streak = 8\n',
    )
    + """
[governance]
review_at = 0.5
webhook = "https://hooks.example/x"

[gateway]
port = 8000
max_body = "1MB"
[[gateway.upstreams]]
name = "local"
protocol = "openai"
base_url = "http://127.0.0.1:9"
proxy = "http://127.0.0.1:3128"
[[gateway.upstreams.credentials]]
name = "k"
env = "K"
[gateway.models]
smart = ["local/qwen"]
[gateway.timeouts]
idle = "1m"
[gateway.budgets.agents.t-1]
total_usd = 1
[gateway.prices."local/qwen"]
input = 1
output = 2

[[notify]]
kind = "webhook"
url_env = "HOOK"
format = "slack"
events = ["best", "stopped"]
min_interval = "5m"
tries = 3

[executor]
kind = "ray"
address = "127.0.0.1:6379"
num_cpus = 2
resources = {a100 = 1}

[[notify]]
kind = "email"
host = "smtp.example.com"
port = 587
username = "me"
password_file = "~/.smtp"
from = "a@example.com"
to = ["b@example.com"]
"""
)
ODD_VALUES = [
    "0", "-1", "1.5", "1e400", "nan", "true", '""', '"my lab"', '"-1s"', '"abc"', '"*.py"',
    "[]", "[1]", '["a", 1]', "[[1]]", "{}", "{a = 1}", "[{}]", "70000",
]  # fmt: skip
STRAY_LINES = ["bogus = 1", "[x]", "[[agents]]", 'name = "t"', "low = 3", "[lab]", "x = [1,"]


@given(
    st.lists(
        st.tuples(
            st.integers(0, len(EVERYTHING.splitlines()) - 1),
            st.one_of(
                st.sampled_from(ODD_VALUES).map(lambda v: ("value", v)),
                st.sampled_from(STRAY_LINES).map(lambda v: ("line", v)),
            ),
        ),
        min_size=1,
        max_size=3,
    )
)
def test_whatever_the_file_says_the_answer_is_a_lab_or_one_message_with_a_fix(
    edits: list[tuple[int, tuple[str, str]]],
) -> None:
    parse_config(EVERYTHING, Path("overnight.toml"))  # unchanged, it is a lab
    lines = EVERYTHING.splitlines()
    for i, (kind, text) in edits:
        key, equals, _ = lines[i].partition("=")
        lines[i] = f"{key}= {text}" if kind == "value" and equals else text
    try:
        parse_config("\n".join(lines) + "\n", Path("overnight.toml"))
    except ConfigError as exc:
        problem, _, fix = str(exc).partition("\n  fix: ")
        assert fix and "\n" not in problem + fix, str(exc)
        assert "Input should" not in problem and "Value error" not in problem, str(exc)


USAGE_MISTAKES = [
    ["run", "--bogus"],
    ["nosuch"],
    ["run", "--trials", "0"],
    ["run", "--trials", "many"],
    ["audit", "nosuch"],
    ["audit", "verify", "--bogus"],
    ["policy", "check"],
    ["policy", "nosuch"],
    ["approve"],
    ["status", "a", "b", "c"],
]


@pytest.mark.parametrize("args", USAGE_MISTAKES, ids=" ".join)
def test_a_usage_mistake_prints_usage_and_error_not_a_traceback(args: list[str]) -> None:
    result = run_cli(*args)
    assert result.returncode == 2, (result.returncode, result.stdout, result.stderr)
    lines = result.stderr.splitlines()
    assert lines[0].startswith("Usage: overnight "), result.stderr
    assert lines[1].startswith("Try 'overnight ") and lines[1].endswith(" --help' for help.")
    assert lines[-1].startswith("Error: ") and len(lines) == 4, result.stderr
    assert "Traceback" not in result.stderr and "╭" not in result.stderr


def _command_paths() -> list[list[str]]:
    import typer.main

    from overnight.cli.app import app

    def walk(command: Any, path: list[str]) -> Iterator[list[str]]:
        subcommands = getattr(command, "commands", None)
        if not subcommands:
            yield path
        for name, sub in (subcommands or {}).items():
            yield from walk(sub, [*path, name])

    return list(walk(typer.main.get_command(app), []))


@pytest.mark.parametrize("path", _command_paths(), ids=" ".join)
def test_every_command_answers_an_unknown_option_with_its_usage(
    path: list[str], monkeypatch: pytest.MonkeyPatch, capfd: pytest.CaptureFixture[str]
) -> None:
    from overnight.cli import main

    monkeypatch.setattr(sys, "argv", ["overnight", *path, "--bogus"])
    try:
        with pytest.raises(SystemExit) as exited:
            main()
    finally:  # main() points SIGUSR1 at this test's captured stderr; leave nothing behind
        faulthandler.unregister(signal.SIGUSR1)
    stderr = capfd.readouterr().err
    assert exited.value.code == 2, stderr
    assert stderr.startswith(f"Usage: overnight {' '.join(path)} "), stderr
    assert stderr.splitlines()[-1].startswith("Error: No such option: --bogus"), stderr


def test_version() -> None:
    result = run_cli("--version")
    assert (result.returncode, result.stdout, result.stderr) == (
        0,
        f"overnight {__version__}\n",
        "",
    )
