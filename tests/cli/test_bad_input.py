"""Bad input: one clear message naming the file, the field and the fix; nothing recorded lost."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

from overnight.lab.lock import holder
from overnight.sessions import wait_until
from tests.helpers.labs import git, make_lab
from tests.helpers.processes import OVERNIGHT, run_cli, start, stop


def _fails(result: subprocess.CompletedProcess[str], code: int, *needles: str) -> str:
    assert result.returncode == code, (result.returncode, result.stdout, result.stderr)
    message = result.stderr
    for needle in needles:
        assert needle in message, f"{needle!r} not in:\n{message}"
    assert "Traceback" not in message
    return message


def test_no_config(tmp_path: Path) -> None:
    git(tmp_path, "init", "-q")
    _fails(
        run_cli("run", str(tmp_path)),
        2,
        "overnight.toml",
        "no overnight.toml here",
        "overnight init",
    )


def test_invalid_toml_names_the_line(lab: Path) -> None:
    path = lab / "overnight.toml"
    path.write_text(path.read_text().replace('metric = "score"', "metric = score"))
    git(lab, "commit", "-qam", "broken")
    _fails(run_cli("run", str(lab)), 2, "overnight.toml:6", "not valid TOML", "fix:")


def test_unknown_field_names_field_line_and_suggestion(lab: Path) -> None:
    path = lab / "overnight.toml"
    path.write_text(
        path.read_text().replace(
            'metric = "score"', 'metric = "score"\nmetrik_goal = 1\ngoall = "max"'
        )
    )
    git(lab, "commit", "-qam", "typo")
    message = _fails(
        run_cli("run", str(lab)), 2, "overnight.toml:7", "lab.metrik_goal", "unknown field"
    )
    assert "remove it" in message
    path.write_text(path.read_text().replace("metrik_goal = 1\n", ""))
    git(lab, "commit", "-qam", "typo 2")
    _fails(run_cli("run", str(lab)), 2, "lab.goall", "did you mean 'goal'")


def test_bad_values_say_what_is_expected(lab: Path) -> None:
    path = lab / "overnight.toml"
    path.write_text(path.read_text().replace('budget = "20s"', 'budget = "twenty"'))
    git(lab, "commit", "-qam", "bad budget")
    _fails(run_cli("run", str(lab)), 2, "lab.budget", "is not a duration", '"5m"')


def test_glob_that_matches_nothing(lab: Path) -> None:
    path = lab / "overnight.toml"
    path.write_text(
        path.read_text().replace('editable = ["exp.py"]', 'editable = ["exp.py", "src/**/*.py"]')
    )
    git(lab, "commit", "-qam", "glob")
    _fails(run_cli("run", str(lab)), 2, "lab.editable[1]", "'src/**/*.py' matches no file", "fix:")


def test_not_a_git_repo(lab: Path) -> None:
    import shutil

    shutil.rmtree(lab / ".git")
    _fails(run_cli("run", str(lab)), 2, "not a git repository", "git init")


def test_uncommitted_changes_are_refused(lab: Path) -> None:
    (lab / "exp.py").write_text((lab / "exp.py").read_text() + "# wip\n")
    message = _fails(run_cli("run", str(lab)), 2, "uncommitted changes", "M exp.py", "git stash")
    assert "commit" in message
    assert not (lab / ".overnight" / "overnight.db").exists()


def test_run_command_not_found(lab: Path) -> None:
    path = lab / "overnight.toml"
    path.write_text(
        path.read_text().replace(f'run = "{sys.executable} exp.py"', 'run = "pyhton3 exp.py"')
    )
    git(lab, "commit", "-qam", "typo")
    _fails(
        run_cli("run", str(lab)), 2, "lab.run", "command 'pyhton3' not found on PATH", "virtualenv"
    )


def test_knob_whose_assignment_is_missing(lab: Path) -> None:
    path = lab / "overnight.toml"
    path.write_text(path.read_text().replace('name = "Y"', 'name = "Z"'))
    git(lab, "commit", "-qam", "knob")
    _fails(
        run_cli("run", str(lab)), 2, "knobs[1].name", "no top-level assignment `Z = ...` in exp.py"
    )


def test_run_that_never_prints_the_metric(tmp_path: Path) -> None:
    lab = make_lab(tmp_path / "lab", script="X = 0.5\nY = 5\nprint('loss: 3')\n")
    _fails(
        run_cli("run", str(lab)),
        3,
        "baseline",
        "no `score: <number>` line",
        "loss: 3",  # the log tail is shown
        "fix:",
    )


def test_run_that_hangs_past_the_budget(tmp_path: Path) -> None:
    lab = make_lab(
        tmp_path / "lab",
        script="import time\nX = 0.5\nY = 5\ntime.sleep(600)\n",
        lab={"budget": "1s", "grace": "1s"},
    )
    started = time.monotonic()
    _fails(run_cli("run", str(lab)), 3, "killed after 2s (budget + grace)")
    assert time.monotonic() - started < 30


def test_baseline_that_writes_a_protected_file(tmp_path: Path) -> None:
    lab = make_lab(
        tmp_path / "lab",
        script="X = 0.5\nY = 5\nopen('judge.py', 'w').write('# gamed')\nprint('score: 0')\n",
    )
    _fails(run_cli("run", str(lab)), 3, "integrity", "protected file(s) modified: judge.py")


def test_a_second_run_on_the_same_lab_is_refused(tmp_path: Path) -> None:
    lab = make_lab(
        tmp_path / "lab", script="import time\nX = 0.5\nY = 5\ntime.sleep(60)\nprint('score: 1')\n"
    )
    log = tmp_path / "first.err"
    with log.open("wb") as stderr:
        first = start([*OVERNIGHT, "run", str(lab)], stdout=subprocess.DEVNULL, stderr=stderr)
    try:
        # until the first run holds the lab
        wait_until(lambda: holder(lab) is not None or first.poll() is not None, timeout=30)
        assert first.poll() is None, log.read_text()
        _fails(
            run_cli("run", str(lab)),
            2,
            f"(pid {first.pid}) is already running",
            f"kill {first.pid}",
        )
        status = json.loads(run_cli("status", str(lab), "--json").stdout)
        assert status["running_pid"] == first.pid
    finally:
        first.terminate()
        try:
            first.wait(timeout=30)
        except subprocess.TimeoutExpired:
            # Seen once in CI, not reproduced: ask it where it is stuck (SIGUSR1), then kill it.
            first.send_signal(signal.SIGUSR1)
            wait_until(lambda: b"most recent call first" in log.read_bytes(), timeout=10)
            stop(first, first=signal.SIGKILL)
            raise AssertionError(
                f"`overnight run` did not stop within 30 s of SIGTERM:\n{log.read_text()}"
            ) from None
    assert holder(lab) is None


def test_config_error_after_a_run_loses_nothing(tmp_path: Path) -> None:
    lab = make_lab(tmp_path / "lab")
    assert run_cli("run", str(lab), "--trials", "3").returncode == 0
    before = run_cli("ledger", str(lab), "--tsv").stdout
    path = lab / "overnight.toml"
    good = path.read_text()
    path.write_text(good.replace('metric = "score"', 'metric = "score"\nbogus = 1'))
    git(lab, "commit", "-qam", "oops")
    _fails(run_cli("run", str(lab)), 2, "lab.bogus")
    path.write_text(good)
    git(lab, "commit", "-qam", "fixed")
    assert run_cli("ledger", str(lab), "--tsv").stdout == before


def test_changing_the_lab_mid_run_asks_for_a_new_run(tmp_path: Path) -> None:
    lab = make_lab(tmp_path / "lab")
    assert run_cli("run", str(lab), "--trials", "1").returncode == 0
    path = lab / "overnight.toml"
    path.write_text(
        path.read_text().replace('metric = "score"', 'metric = "score"\nmin_delta = 0.5')
    )
    git(lab, "commit", "-qam", "tighter")
    _fails(run_cli("run", str(lab)), 2, "lab.min_delta", "--new")
    assert run_cli("run", str(lab), "--trials", "1", "--new").returncode == 0


def test_missing_program_file(lab: Path) -> None:
    git(lab, "rm", "-q", "program.md")
    git(lab, "commit", "-qm", "no program")
    _fails(run_cli("run", str(lab)), 2, "overnight.toml", "lab.program", "program.md", "fix:")


def test_an_llm_agent_needs_a_gateway_route(lab: Path) -> None:
    path = lab / "overnight.toml"
    text = path.read_text().replace(
        '[[agents]]\nname = "t"', '[[agents]]\nname = "t"\nruntime = "codex"'
    )
    path.write_text(text)
    git(lab, "commit", "-qam", "codex without a gateway")
    _fails(run_cli("run", str(lab)), 2, "agents[0].model", "has no model", "[gateway.models]")
    path.write_text(
        text.replace('runtime = "codex"', 'runtime = "codex"\nmodel = "smrt"')
        + '\n[gateway]\n[[gateway.upstreams]]\nname = "u"\nprotocol = "openai"\n'
        'base_url = "http://127.0.0.1:9"\n[gateway.models]\nsmart = ["u/m"]\n'
    )
    git(lab, "commit", "-qam", "a misspelt route")
    _fails(run_cli("run", str(lab)), 2, "agents[0].model", "'smrt'", "set model to one of: smart")


def test_a_store_that_cannot_be_opened_is_one_error_naming_it_without_its_password(
    lab: Path,
) -> None:
    # nothing listens on port 1 here: the connection is refused at once
    refused = {"OVERNIGHT_DB": "postgresql://bob:s3cret@127.0.0.1:1/test"}
    for command in (("run", str(lab), "--trials", "1"), ("status", str(lab))):
        message = _fails(
            run_cli(*command, env=refused),
            2,
            "the store at postgresql://bob:***@127.0.0.1:1/test could not be opened",
            "Connection refused",
            "fix: start the database server or correct OVERNIGHT_DB",
        )
        assert "s3cret" not in message
        assert len(message.strip().splitlines()) == 2, message
    unusable = {"OVERNIGHT_DB": "mysql://bob:s3cret@db/lab"}
    message = _fails(
        run_cli("status", str(lab), env=unusable),
        2,
        "mysql://bob:***@db/lab",
        "overnight keeps its store in SQLite or PostgreSQL",
        "fix: set OVERNIGHT_DB to a postgresql://",
    )
    assert "s3cret" not in message
    garbled = {"OVERNIGHT_DB": "postgresql://bob:s3cret@db:port/lab"}
    message = _fails(run_cli("status", str(lab), env=garbled), 2, "does not read as a database URL")
    assert "s3cret" not in message
    # without it, the lab's own store opens (and has no run: none could start)
    _fails(run_cli("status", str(lab)), 2, "has no run yet")
