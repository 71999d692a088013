"""Governance figures: how long a policy decision takes, the Claude Code hook's round
trip, and the audit log's append rate and verify time (from benchmarks/audit.py).

Decision latency: `Policy.decide` on a stream of realistic actions (shell
commands, edits, reads, web fetches, LLM requests, keeps; 240 distinct ones,
cycled), timed end to end per call — building the action's CEL map, the read-only
check of a shell command, every rule and signal, risk, autonomy. Two policies:

- 50 rules shaped like the ones people write (regexes on commands, globs on
  paths, prefixes, lists, costs, `extra` fields), without the shipped defaults;
- the shipped defaults alone (`overnight/governance/rules/default.yaml`).

Baselines in the same run, on the same 50 rules and actions:
- *stock CEL*: each rule its own evaluation, with cel-cpp's built-in `matches`
  (which compiles its regular expression on every call);
- *Rust runtime*: `common-expression-language`, the other maintained CEL runtime
  on PyPI, one evaluation per rule with the context converted once per decision
  (skipped when it is not installed).

    .venv/bin/python benchmarks/governance.py [--decisions 20000]
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import yaml

from overnight.governance.action import Action, Kind
from overnight.governance.expressions import Activation, _env
from overnight.governance.policy import Policy

TARGET_P50_US = 200.0

# ten shapes of rule, five of each: 50 rules
_SHAPES = [
    (
        'action.kind == "shell" && action.command.matches(r"\\b(tool{i}|cmd{i})\\b[^|;&]*--danger")',
        "deny",
    ),
    ('action.kind == "edit" && action.relpath.matchesGlob("secret{i}/**")', "deny"),
    ('action.kind == "read" && action.path.startsWith("/data/private{i}/")', "review"),
    (
        'action.kind == "llm" && action.model == "model-{i}" && action.est_cost_usd > 0.{i}',
        "review",
    ),
    (
        'action.kind == "network" && '
        'action.url.matches(r"^https?://([a-z0-9-]+\\.)*blocked{i}\\.example(/|$)")',
        "deny",
    ),
    (
        'action.kind == "shell" && '
        'action.protected.exists(g, action.command.contains(g + ".bak{i}"))',
        "deny",
    ),
    ('action.agent in ["intern-{i}", "guest-{i}"] && !action.read_only', "review"),
    (
        'action.tool == "mcp__tool{i}" && has(action.extra.target) && '
        'action.extra.target == "prod"',
        "deny",
    ),
    ('action.command.matches(r"(^|\\s)(dangerous{i}|wipe-{i})(\\s|$)")', "deny"),
    ('action.kind == "keep" && action.delta > 0.{i}', "review"),
]


def fifty_rules() -> dict[str, Any]:
    rules = []
    for n in range(50):
        when, effect = _SHAPES[n % 10]
        rules.append(
            {
                "id": f"team-rule-{n}",
                "when": when.format(i=n // 10 + 1),
                "effect": effect,
                "reason": f"team rule {n}",
            }
        )
    return {"rules": rules}


def actions(count: int = 240) -> list[Action]:
    rng = random.Random(7)
    wt = "/srv/lab/.overnight/worktrees/run/agent-1"
    ctx: dict[str, Any] = {"agent": "agent-1", "worktree": wt, "protected": ("prepare.py",)}
    out: list[Action] = []
    for n in range(count):
        kind = n % 8
        if kind in (0, 1, 2):
            command = rng.choice(
                [
                    f"python train.py --lr {rng.random():.4f} --epochs {rng.randint(1, 20)}",
                    f"git status && git diff --stat HEAD~{rng.randint(1, 5)}",
                    f"grep -rn 'def forward' models/ | head -{rng.randint(5, 50)}",
                    f"rm -rf build/cache-{n} && mkdir -p build/cache-{n}",
                    f"ls -la data/split-{n} 2>/dev/null",
                    f"curl -s http://127.0.0.1:{8000 + n}/metrics | grep loss",
                    f"sed -i 's/WIDTH = 64/WIDTH = {n}/' train.py",
                    f"cat logs/run-{n}.txt | tail -20",
                ]
            )
            out.append(Action.shell(command, tool="Bash", **ctx))
        elif kind in (3, 4):
            path = rng.choice([f"models/block{n}.py", "train.py", f"configs/exp-{n}.yaml"])
            out.append(Action.edit(path, **ctx))
        elif kind == 5:
            path = rng.choice([f"{wt}/data/part-{n}.csv", f"/usr/lib/python3/m{n}.py"])
            out.append(Action(kind=Kind.read, tool="Read", path=path, **ctx))
        elif kind == 6:
            if n % 16 == 6:
                url = f"https://docs.example.org/page/{n}"
                out.append(Action(kind=Kind.network, tool="WebFetch", url=url, **ctx))
            else:
                out.append(Action.llm(f"model-{n % 7}", rng.random() * 2, **ctx))
        else:
            out.append(Action.keep(rng.random(), rng.random() / 5, **ctx))
    return out


def percentiles(samples_ns: Sequence[int]) -> tuple[float, float, float]:
    ordered = sorted(samples_ns)
    p50 = ordered[len(ordered) // 2] / 1000
    p99 = ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))] / 1000
    return p50, p99, statistics.fmean(ordered) / 1000


def time_calls(fn: Callable[[Action], Any], pool: Sequence[Action], n: int) -> list[int]:
    for action in pool:  # warm up: caches, branch predictors, first-call costs
        fn(action)
    samples = []
    clock = time.perf_counter_ns
    for k in range(n):
        action = pool[k % len(pool)]
        started = clock()
        fn(action)
        samples.append(clock() - started)
    return samples


def stock_cel(sources: Sequence[str]) -> Callable[[Action], Any]:
    """The same rules, one evaluation each, with cel-cpp's own `matches`."""
    env = _env()
    programs = [env.compile(s) for s in sources]

    def decide(action: Action) -> list[Any]:
        activation = Activation(action.to_cel()).native
        return [p.eval(activation).value() for p in programs]

    return decide


def rust_cel(sources: Sequence[str]) -> Callable[[Action], Any] | None:
    try:
        import cel as rust  # common-expression-language
    except ImportError:
        return None
    from overnight.globs import matches as glob_matches

    programs = [rust.compile(s) for s in sources]

    def matches_glob(path: str, globs: Any) -> bool:
        return glob_matches(path, [globs] if isinstance(globs, str) else globs)

    def decide(action: Action) -> list[Any]:
        context = rust.Context({"action": action.to_cel()})
        context.add_function("matchesGlob", matches_glob)
        out = []
        for p in programs:
            try:
                out.append(p.execute(context))
            except Exception as exc:  # an erroring rule is a deny, as in ours
                out.append(exc)
        return out

    return decide


def line(label: str, samples: list[int], baseline_p50: float | None = None) -> float:
    p50, p99, mean = percentiles(samples)
    ratio = f"  ({baseline_p50 / p50:.1f}x faster than ours)" if baseline_p50 else ""
    if baseline_p50 is not None and baseline_p50 < p50:
        ratio = f"  ({p50 / baseline_p50:.1f}x our time)"
    print(
        f"  {label:<44} p50 {p50:8.1f} µs   p99 {p99:8.1f} µs   mean {mean:8.1f} µs{ratio}",
        flush=True,
    )
    return p50


def decision_latency(n: int) -> None:
    print(f"decision latency ({n} decisions per line; target p50 <= {TARGET_P50_US:.0f} µs)")
    pool = actions()
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "team.yaml"
        path.write_text(yaml.safe_dump(fifty_rules(), sort_keys=False))
        team = Policy.from_files([path], defaults=False)
        shipped = Policy.from_files([])
    ours = line("50 rules, overnight (batched, RE2 cached)", time_calls(team.decide, pool, n))
    effects: dict[str, int] = {}
    for action in pool:
        effect = team.decide(action).effect.value
        effects[effect] = effects.get(effect, 0) + 1
    print(f"    decisions on the action pool: {effects}")
    rules = len(shipped.rules) + len(shipped.signals)
    line(f"shipped defaults ({rules} rules + signals)", time_calls(shipped.decide, pool, n))
    sources = [r.when for r in team.rules]
    line("50 rules, stock CEL (one eval each)", time_calls(stock_cel(sources), pool, n), ours)
    rust = rust_cel(sources)
    if rust is None:
        print("  50 rules, Rust runtime: skipped (common-expression-language not installed)")
    else:
        line("50 rules, Rust runtime (common-expression-language)", time_calls(rust, pool, n), ours)
    verdict = "meets" if ours <= TARGET_P50_US else "MISSES"
    print(f"  -> overnight {verdict} the target: p50 {ours:.1f} µs for 50 rules")


HOOK_TARGET_MS = 60.0
HOOK_LAB = """\
[lab]
name = "hookbench"
editable = ["exp.py"]
run = "python exp.py"
metric = "score"

[[agents]]
name = "claude"
runtime = "claude-code"
model = "m"

[gateway]
port = 0

[[gateway.upstreams]]
name = "fake"
protocol = "anthropic"
base_url = "http://127.0.0.1:9"

[gateway.models]
m = ["fake/model"]
"""


def hook_round_trip(n: int) -> None:
    """Claude Code's PreToolUse hook as Claude Code runs it: a new `python -I -S hook.py`
    process per tool call, posting to the command center (a real lab's gateway with its
    governor), which decides, audits and answers. Baseline in the same run: the bare
    interpreter starting and exiting (`python -I -S -c pass`)."""
    import json as _json
    import os
    import subprocess

    from overnight.agents.runtimes import HOOK_SCRIPT
    from overnight.daemon import UiOptions, lab_services
    from overnight.lab.lab import Lab
    from overnight.wiring import Checks

    sys.path.insert(0, str(Path(__file__).parent))
    from _bench import commit_lab

    python = os.path.realpath(sys.executable)
    with tempfile.TemporaryDirectory() as tmp:
        os.environ.setdefault("OVERNIGHT_AUDIT_KEY", str(Path(tmp) / "key" / "audit.key"))
        # the lab is only started, never its agents: any `claude` passes the preflight
        os.environ.setdefault("OVERNIGHT_CLAUDE", str(Path(__file__).parent / "_standin_claude.py"))
        root = commit_lab(
            Path(tmp) / "lab",
            {"overnight.toml": HOOK_LAB, "exp.py": "print('score: 1')\n", "program.md": "x\n"},
        )
        lab = Lab.start(root, checks=Checks())
        try:
            with lab_services(lab, lambda _line: None, UiOptions(enabled=False)) as services:
                key = Path(services.key_files["claude"]).read_text().strip()
                worktree = lab.agent("claude").worktree
                env = {
                    "PATH": os.environ["PATH"],
                    "OVERNIGHT_HOOK_URL": str(services.gateway_url),
                    "ANTHROPIC_API_KEY": key,
                }
                payload = _json.dumps(
                    {
                        "hook_event_name": "PreToolUse",
                        "tool_name": "Bash",
                        "tool_input": {"command": "python exp.py | tail -3"},
                        "cwd": worktree,
                    }
                )
                bare, hook = [], []
                for _ in range(n):
                    t = time.perf_counter_ns()
                    subprocess.run([python, "-I", "-S", "-c", "pass"], check=True)
                    bare.append(time.perf_counter_ns() - t)
                    t = time.perf_counter_ns()
                    done = subprocess.run(
                        [python, "-I", "-S", str(HOOK_SCRIPT)],
                        input=payload,
                        capture_output=True,
                        text=True,
                        env=env,
                    )
                    hook.append(time.perf_counter_ns() - t)
                    decision = _json.loads(done.stdout)["hookSpecificOutput"]
                    assert decision["permissionDecision"] == "allow", done.stderr
        finally:
            lab.close()
    base = statistics.median(bare) / 1e6
    p50 = statistics.median(hook) / 1e6
    p95 = sorted(hook)[int(0.95 * (len(hook) - 1))] / 1e6
    print(f"\nhook round trip, {n} tool calls, process start included:")
    print(f"  interpreter start alone       p50 {base:6.1f} ms")
    print(
        f"  hook -> command center -> hook p50 {p50:6.1f} ms, p95 {p95:6.1f} ms"
        f" ({p50 / base:.1f}x the bare start)"
    )
    verdict = "meets" if p50 <= HOOK_TARGET_MS else "MISSES"
    print(f"  -> {verdict} the target: p50 {p50:.1f} ms (target <= {HOOK_TARGET_MS:g} ms)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--decisions", type=int, default=20000)
    parser.add_argument("--hooks", type=int, default=100)
    parser.add_argument("--audit-records", type=int, default=100_000)
    args = parser.parse_args()
    print(f"python {sys.version.split()[0]}")
    decision_latency(args.decisions)
    hook_round_trip(args.hooks)
    sys.path.insert(0, str(Path(__file__).parent))
    from audit import audit_figures  # the audit log's append rate and verify time

    audit_figures(records=args.audit_records)


if __name__ == "__main__":
    main()
