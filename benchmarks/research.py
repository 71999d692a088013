"""The research loop, measured: does a team find better results sooner, is the noise floor
right, and does the experiment slot stay busy while LLM agents think.

- **search**: on the shipped examples `spirals` and `tsp`, for each of 5 seeds, N trials
  of (a) one optuna agent, (b) two with `share = "none"`, (c) two with `share = "best"`
  (`patience = 3`):
  the trials it took the lab's best to reach a target, and the lab's best after N trials.
  Trials are counted over all agents together, the baseline not included. Target: with
  sharing, the median trials to target at most 0.8x that without. On a noisy lab (tsp)
  a best is often one lucky run, so each lab best's commit is also run REMEASURE times
  afresh, and the same figures are printed for what it is worth (the mean of those).
- **noise**: tsp's unchanged solver run 20 times (σ, the standard deviation of its
  tour_length) against the σ each tsp run of the search estimated from its `noise_runs`
  baseline runs (`min_delta = "auto"` is twice that). Target: within ±50% of σ.
- **slot**: two `llm` agents sharing one experiment slot (`parallel = 1`), against a fake
  model answering every request only after THINK_S seconds: the share of wall time, from
  the first agent trial's start to the last one's end, during which the slot runs an
  experiment. On spirals (an experiment longer than an answer, so one agent can think
  while the other's experiment runs) the target is at least 95%; tsp (experiments far
  shorter than an answer) shows the other regime, where thinking bounds it.

Everything goes through the real `overnight run` on fresh copies of the examples
(`overnight example`, real git repositories in a temporary folder), offline.
`OVERNIGHT_SEED` makes each seed's optuna proposals repeatable; tsp's solver stays random,
which is the noise its lab measures. spirals trains for EPOCHS = 60 here instead of the
shipped 360 (the same lab otherwise, a sixth of the time), so 15 runs of it fit in minutes.

    .venv/bin/python benchmarks/research.py [--quick] [--seeds N] [--jobs J] [--part ...]
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import math
import os
import random
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import tomllib
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path

from _bench import ROOT, exit_on_sigterm, machine_line

from overnight.records import BASELINE, TrialStatus
from overnight.store import open_store, store_url
from overnight.testing import FakeProvider, Reply

OVERNIGHT = [sys.executable, "-m", "overnight"]


@dataclass(frozen=True)
class Search:
    """How one example lab is searched."""

    lab: str
    target: float
    trials: int
    epochs: int | None = None
    """spirals: train.py's EPOCHS for this benchmark."""
    patience: int = 3
    """`[lab] patience` (when the agents share): a third or less of an agent's trials."""
    stricter: tuple[float, ...] = ()
    """Targets beyond `target`, fixed in advance: the same runs' trials to each are printed
    too (a target that lucky first draws reach says little about the search)."""
    looser: tuple[float, ...] = ()
    """Targets short of `target`, printed the same way (spirals' former target, 0.38, which
    a first random draw reached at the same trial in both two-agent configs in half the
    seeds: it measured the draws' luck, not the search)."""


SEARCHES = [
    Search("spirals", target=0.37, trials=30, epochs=60, looser=(0.38,), stricter=(0.36,)),
    Search("tsp", target=7.75, trials=30, stricter=(7.65, 7.55)),
]
CONFIGS = {
    "one agent": (1, "none"),
    "two, share none": (2, "none"),
    "two, share best": (2, "best"),
}
SHORT = {"one": "one agent", "none": "two, share none", "best": "two, share best"}
"""`--configs` names."""
THINK_S = 2.5
"""Seconds the fake model takes to answer each request, in the slot part."""
SLOT_EPOCHS = 120
"""spirals' EPOCHS in the slot part: a run of about 4 s on an idle core, longer than a
model's answer (so two agents can keep one slot busy), though not by much."""
SLOT_TRIALS = 16
NOISE_RUNS = 20


# --- labs ---------------------------------------------------------------------------------


def environment(tmp: Path, seed: int | None = None) -> dict[str, str]:
    """The CLI's environment: the venv's python first on PATH (the labs' `python`), a
    throwaway audit key, the seed; never a database of the user's."""
    env = {k: v for k, v in os.environ.items() if k != "OVERNIGHT_DB"}
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    env["OVERNIGHT_AUDIT_KEY"] = str(tmp / "audit" / "audit.key")
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    if seed is not None:
        env["OVERNIGHT_SEED"] = str(seed)
    return env


_children: set[subprocess.Popen[str]] = set()
_children_lock = threading.Lock()


def cli(args: Sequence[str], env: dict[str, str], timeout: float = 1800) -> str:
    """`overnight ARGS`; its output, or SystemExit with its errors."""
    proc = subprocess.Popen(
        [*OVERNIGHT, *args], env=env, cwd=ROOT, text=True,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True,
    )  # fmt: skip
    with _children_lock:
        _children.add(proc)
    try:
        out, err = proc.communicate(timeout=timeout)
    finally:
        with _children_lock:
            _children.discard(proc)
    if proc.returncode != 0:
        raise SystemExit(f"overnight {' '.join(args)} failed ({proc.returncode}):\n{err}")
    return out


def stop_children() -> None:
    """SIGTERM every `overnight` still running (a run records its stop and ends its
    experiments), then wait for each."""
    with _children_lock:
        left = list(_children)
    for proc in left:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
    for proc in left:
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(30)


def git(root: Path, *args: str) -> None:
    subprocess.run(
        ["git", "-c", "user.name=bench", "-c", "user.email=bench@localhost", *args],
        cwd=root, check=True, capture_output=True,
    )  # fmt: skip


def example(
    name: str,
    dest: Path,
    env: dict[str, str],
    *,
    lab: dict[str, str],
    agents: str,
    epochs: int | None = None,
) -> Path:
    """`overnight example NAME DEST`, then `[lab]` fields set (TOML values as text), the
    `[[agents]]` tables replaced by `agents`, spirals' EPOCHS set; committed."""
    cli(["example", name, str(dest)], env)
    config = dest / "overnight.toml"
    text = config.read_text().split("\n[[agents]]", 1)[0].rstrip() + "\n\n" + agents
    head, rest = text.split("\n[[knobs]]", 1) if "\n[[knobs]]" in text else (text, None)
    for field, value in lab.items():
        line = f"{field} = {value}"
        head, found = re.subn(rf"^{field} = .*$", line, head, count=1, flags=re.M)
        if not found:
            head = head.replace("\n[lab]\n", f"\n[lab]\n{line}\n", 1)
    config.write_text(head if rest is None else head + "\n[[knobs]]" + rest)
    if epochs is not None:
        train = dest / "train.py"
        source, found = re.subn(
            r"^EPOCHS = \d+", f"EPOCHS = {epochs}", train.read_text(), count=1, flags=re.M
        )
        assert found == 1, "spirals' train.py has no `EPOCHS = ...` line"
        train.write_text(source)
    git(dest, "commit", "-qam", "benchmark settings")
    return dest


def optuna_agents(count: int) -> str:
    return f'[[agents]]\nname = "tuner"\nruntime = "optuna"\ncount = {count}\n'


# --- search -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Outcome:
    to_target: int | None
    """Trials (all agents', in the order they finished) until the lab's best reached the
    target; None if it did not within the run."""
    best: float
    trials: int
    adoptions: int
    explores: int
    """Trials proposed by an explore step (near the lab's best, after an adoption)."""
    explore_bests: int
    """... of which made a new lab best."""
    sigma: float | None
    """The σ the run measured from its baseline runs (min_delta = "auto"), if it did."""
    seconds: float
    bests: tuple[float, ...] = ()
    """The lab's best after each finished trial, in order."""
    means: tuple[float, ...] = ()
    """On a noisy lab: the mean of REMEASURE fresh runs of the lab's best commit after each
    finished trial (what that commit is worth, not the one lucky run that made it best)."""
    measured: tuple[float, ...] = ()
    """Each finished trial's metric, kept or not (nan: not measured), in order."""
    held: int = 0
    """Trials that measured the target but were discarded as within the noise of their
    agent's best, before the lab's best reached it (what the noise floor held back)."""

    def trials_to(self, target: float) -> int | None:
        return next((n for n, best in enumerate(self.bests, 1) if best <= target), None)

    def trials_to_mean(self, target: float) -> int | None:
        return next((n for n, mean in enumerate(self.means, 1) if mean <= target), None)

    def trials_to_measured(self, target: float) -> int | None:
        """Trials until one measured `target` or better, whether kept or not."""
        return next((n for n, m in enumerate(self.measured, 1) if m <= target), None)


def search_run(s: Search, config: str, seed: int, tmp: Path) -> Outcome:
    agents, share = CONFIGS[config]
    env = environment(tmp, seed)
    slug = config.replace(" ", "-").replace(",", "")
    dest = tmp / f"{s.lab}-{slug}-{seed}"
    root = example(
        s.lab, dest, env, epochs=s.epochs,
        lab={"share": f'"{share}"', "patience": str(s.patience), "parallel": str(agents)},
        agents=optuna_agents(agents),
    )  # fmt: skip
    started = time.monotonic()
    cli(["run", str(root), "--trials", str(s.trials), "--no-ui"], env)
    seconds = time.monotonic() - started
    store = open_store(store_url(root))
    try:
        run = store.latest_run(s.lab)
        assert run is not None
        trials = store.trials(run.id)
        adoptions = sum(1 for e in store.events(run.id, limit=100_000) if e.kind == "agent.adopted")
    finally:
        store.close()
    baseline = next(t for t in trials if t.agent == BASELINE)
    assert baseline.metric is not None
    done = sorted(
        (t for t in trials if t.agent != BASELINE and t.status.final),
        key=lambda t: t.finished_at or 0.0,
    )
    best, to_target, explore_bests = baseline.metric, None, 0
    bests, commits = [], []
    commit = run.base_commit
    for count, trial in enumerate(done, 1):
        if trial.status is TrialStatus.kept and trial.metric is not None:
            if trial.metric < best and "explore_of" in trial.proposal:
                explore_bests += 1
            if trial.metric < best:  # both labs minimize
                best, commit = trial.metric, trial.candidate_commit or commit
        if to_target is None and best <= s.target:
            to_target = count
        bests.append(best)
        commits.append(commit)
    held = sum(
        1
        for count, t in enumerate(done, 1)
        if t.status is TrialStatus.discarded and (t.reason or "").startswith("within noise")
        and t.metric is not None and t.metric <= s.target and (to_target or math.inf) > count
    )  # fmt: skip
    floor = run.noise_floor
    sigma = float(floor["sigma"]) if floor else None
    explores = sum(1 for t in done if "explore_of" in t.proposal)
    means: tuple[float, ...] = ()
    if sigma:  # a noisy lab: what each lab best is worth
        worth = {c: remeasured(root, c, s, tmp, env) for c in dict.fromkeys(commits)}
        means = tuple(worth[c] for c in commits)
    return Outcome(
        to_target, best, len(done), adoptions, explores, explore_bests, sigma, seconds,
        tuple(bests), means, tuple(math.nan if t.metric is None else t.metric for t in done),
        held,
    )  # fmt: skip


REMEASURE = 5
"""Fresh runs of each lab best commit on a noisy lab (its `means`)."""


def remeasured(root: Path, commit: str, s: Search, tmp: Path, env: dict[str, str]) -> float:
    """The mean metric of REMEASURE runs of the lab's `run` and `evaluate` on `commit`, in a
    checkout of its own."""
    lab = tomllib.loads((root / "overnight.toml").read_text())["lab"]
    command = " && ".join(filter(None, [lab["run"], lab.get("evaluate")]))
    where = Path(tempfile.mkdtemp(dir=tmp, prefix="remeasure-"))
    tar = subprocess.run(
        ["git", "-C", str(root), "archive", "--format=tar", commit],
        check=True, capture_output=True,
    ).stdout  # fmt: skip
    subprocess.run(["tar", "-x", "-C", str(where)], input=tar, check=True)
    values = []
    for _ in range(REMEASURE):
        out = subprocess.run(
            command, shell=True, cwd=where, env=env,
            check=True, capture_output=True, text=True,
        ).stdout  # fmt: skip
        found = re.findall(rf"^{lab['metric']}: ([0-9.eE+-]+)$", out, re.M)
        assert found, f"{s.lab}: no {lab['metric']} in {out!r}"
        values.append(float(found[-1]))
    return statistics.fmean(values)


def median_to_target(outcomes: Sequence[Outcome], trials: int) -> float:
    """The median of trials to target, a run that never reached it counting as infinite."""
    return statistics.median(o.to_target if o.to_target else math.inf for o in outcomes)


def ratio_interval(
    shared: Sequence[Outcome], alone: Sequence[Outcome], trials: int, rounds: int = 4000
) -> tuple[float, float]:
    """How much the ratio of the two medians moves with the luck of the seeds: its 5th and
    95th percentiles over bootstrap resamples of each config's runs (a run that missed the
    target counted as trials + 1)."""
    rng = random.Random(0)
    a = [o.to_target or trials + 1 for o in shared]
    b = [o.to_target or trials + 1 for o in alone]
    ratios = sorted(
        statistics.median(rng.choices(a, k=len(a))) / statistics.median(rng.choices(b, k=len(b)))
        for _ in range(rounds)
    )
    return ratios[int(0.05 * rounds)], ratios[int(0.95 * rounds) - 1]


def shown(value: float, trials: int) -> str:
    return f">{trials}" if math.isinf(value) else f"{value:g}"


def search(
    labs: Sequence[str],
    seeds: Sequence[int],
    tmp: Path,
    quick: bool,
    jobs: int,
    configs: Sequence[str] = tuple(CONFIGS),
) -> dict[str, list[Outcome]]:
    """Every lab, config and seed, `jobs` runs at a time; prints each lab's table.
    Returns tsp's outcomes."""
    tsp: dict[str, list[Outcome]] = {}
    for s in SEARCHES:
        if s.lab not in labs:
            continue
        if quick:
            s = replace(s, trials=s.trials // 2)
        pool = ThreadPoolExecutor(jobs)
        try:
            futures = {
                (config, seed): pool.submit(search_run, s, config, seed, tmp)
                for seed in seeds  # a seed's configs together: a cut-off run still compares
                for config in configs
            }
            for (config, seed), future in futures.items():
                o = future.result()  # the first failure stops the rest
                print(
                    f"  ({s.lab}, {config}, seed {seed}: to target {o.to_target or '-'}, "
                    f"best {o.best:.4f}, {o.seconds:.0f} s)",
                    flush=True,
                )
        finally:
            pool.shutdown(wait=False, cancel_futures=True)
            stop_children()
            pool.shutdown(wait=True)
        print(
            f"\n{s.lab}: {len(seeds)} seeds x {s.trials} trials (all agents together), "
            f"target {s.target:g}, patience {s.patience}"
            + (f", EPOCHS = {s.epochs}" if s.epochs else ""),
            flush=True,
        )
        results: dict[str, list[Outcome]] = {}
        for config in configs:
            results[config] = [futures[config, seed].result() for seed in seeds]
            runs = results[config]
            reached = sum(1 for o in runs if o.to_target)
            print(
                f"  {config:<16} trials to target: median "
                f"{shown(median_to_target(runs, s.trials), s.trials):>4} "
                f"(each: {' '.join(str(o.to_target or f'>{s.trials}') for o in runs)}; "
                f"reached {reached}/{len(runs)})  best after {s.trials}: median "
                f"{statistics.median(o.best for o in runs):.4f} "
                f"(each: {' '.join(f'{o.best:.4f}' for o in runs)})  adoptions "
                f"{sum(o.adoptions for o in runs)}, explore trials "
                f"{sum(o.explores for o in runs)} ({sum(o.explore_bests for o in runs)} new "
                "lab bests)  "
                f"{statistics.fmean(o.seconds for o in runs):.0f} s/run",
                flush=True,
            )
        shared = median_to_target(results["two, share best"], s.trials)
        alone = median_to_target(results["two, share none"], s.trials)
        if math.isinf(alone) and math.isinf(shared):
            ratio = "n/a (neither median reached the target)"
            verdict = "NOT met"
        elif math.isinf(alone):
            ratio, verdict = "< 1 (without sharing the median did not reach it)", "met"
        else:
            value = shared / alone
            ratio = f"{value:.2f}" if not math.isinf(value) else "inf"
            verdict = "met" if value <= 0.8 else "NOT met"
        low, high = ratio_interval(results["two, share best"], results["two, share none"], s.trials)
        print(
            f"  target: share best / share none, median trials to target <= 0.8 -> {verdict} "
            f"({ratio}; over these seeds resampled, 90% of ratios lie in {low:.2f}-{high:.2f}, "
            f"a run that missed the target counted as {s.trials + 1} trials)",
            flush=True,
        )
        paired(s, results)
        if s.lab == "tsp":
            tsp = results
    return tsp


def to_targets(
    s: Search,
    results: dict[str, list[Outcome]],
    trials_to: Callable[[Outcome, float], int | None],
    indent: str,
) -> None:
    """Per target (the looser, the target, the stricter), each config's median trials to
    it by `trials_to`, and how many of its runs reached it."""
    for target in (*s.looser, s.target, *s.stricter):
        cells = []
        for config, runs in results.items():
            counts = [trials_to(o, target) for o in runs]
            middle = statistics.median(c or math.inf for c in counts)
            reached = sum(1 for c in counts if c)
            cells.append(f"{config} {shown(middle, s.trials)} ({reached}/{len(runs)})")
        print(f"{indent}to {target:g}: median trials (runs that reached it): " + ", ".join(cells))


def paired(s: Search, results: dict[str, list[Outcome]]) -> None:
    """What the median hides: how often each config reached the target at all, the same
    runs against the stricter targets, and the two-agent configs seed by seed (their agents
    draw the same first points, so early luck is common to both)."""
    to_targets(s, results, Outcome.trials_to, "  ")
    if all(o.sigma for runs in results.values() for o in runs):
        print(
            "  the first trial that measured it, kept or not (the lab's best moves only past "
            "the noise floor of its agent's best):"
        )
        to_targets(s, results, Outcome.trials_to_measured, "    ")
        held = ", ".join(
            f"{config} {sum(o.held for o in runs)} trials in {sum(1 for o in runs if o.held)} runs"
            for config, runs in results.items()
        )
        print(
            f"    measured the target but discarded as within the noise, before the lab's "
            f"best reached it: {held}",
            flush=True,
        )
    if all(o.means for runs in results.values() for o in runs):
        print(
            f"  what the lab's best is worth (the mean of {REMEASURE} fresh runs of its commit, "
            "not the lucky run that made it best):"
        )
        to_targets(s, results, Outcome.trials_to_mean, "    ")
        for config, runs in results.items():
            print(
                f"    {config}: after {s.trials} trials, median "
                f"{statistics.median(o.means[-1] for o in runs):.4f}"
            )
        pairs = list(zip(results["two, share best"], results["two, share none"], strict=True))
        lower = sum(1 for a, b in pairs if a.means[-1] < b.means[-1])
        print(
            f"    after {s.trials}, seed by seed: share best's is worth more (lower) in {lower} "
            f"of {len(pairs)} seeds",
            flush=True,
        )
    shared, alone = results["two, share best"], results["two, share none"]
    lower = sum(1 for a, b in zip(shared, alone, strict=True) if a.best < b.best)
    higher = sum(1 for a, b in zip(shared, alone, strict=True) if a.best > b.best)
    print(
        f"  best after {s.trials}, seed by seed: share best lower in {lower}, higher in "
        f"{higher}, equal in {len(shared) - lower - higher} of {len(shared)} seeds",
        flush=True,
    )


# --- noise --------------------------------------------------------------------------------


def noise(tsp: dict[str, list[Outcome]], tmp: Path, runs: int) -> None:
    env = environment(tmp)
    root = tmp / "tsp-noise"
    cli(["example", "tsp", str(root)], env)
    values = []
    for _ in range(runs):
        proc = subprocess.run(
            "python solve.py && python evaluate.py", shell=True, cwd=root, env=env,
            capture_output=True, text=True, check=True,
        )  # fmt: skip
        values.append(float(re.findall(r"^tour_length: (\S+)$", proc.stdout, re.M)[-1]))
    sigma = statistics.stdev(values)
    estimates = [o.sigma for runs_ in tsp.values() for o in runs_ if o.sigma is not None]
    print(
        f"\nnoise (tsp): the unchanged solver run {runs} times: mean "
        f"{statistics.fmean(values):.4f}, σ {sigma:.4f}",
        flush=True,
    )
    if not estimates:
        print("  no tsp run of the search measured a noise floor (run --part search,noise)")
        return
    ratios = sorted(e / sigma for e in estimates)
    within = sum(1 for r in ratios if 0.5 <= r <= 1.5)
    middle = statistics.median(ratios)
    print(
        f"  the lab's estimates (σ of its noise_runs = 3 baseline runs, one per tsp run of the "
        f"search, n = {len(ratios)}): median {statistics.median(estimates):.4f}, as a "
        f"fraction of σ: median {middle:.2f}, range {ratios[0]:.2f}-{ratios[-1]:.2f}, "
        f"{within}/{len(ratios)} within ±50%",
        flush=True,
    )
    print(
        f"  target: the noise estimate within ±50% of σ -> "
        f"{'met' if 0.5 <= middle <= 1.5 else 'NOT met'} (median ratio {middle:.2f}; "
        f"each run's own estimate: {within}/{len(ratios)})",
        flush=True,
    )


# --- slot ---------------------------------------------------------------------------------

SLOT_CONFIG = """\
[[agents]]
name = "coder"
runtime = "llm"
model = "smart"
count = 2

[gateway]
port = 0

[[gateway.upstreams]]
name = "fake"
protocol = "openai"
base_url = "{url}/v1"
credentials = [{{ name = "main", env = "BENCH_FAKE_KEY" }}]

[gateway.models]
smart = ["fake/gpt-fake-1"]
"""


def note(k: int, path: str, anchor: str) -> str:
    """A reply whose edit applies to `path` whatever it holds now (its SEARCH is a line no
    edit removes): the scheduling is measured here, not the ideas."""
    return (
        f"DESCRIPTION: note {k}: try the next idea\n"
        f"{path}\n<<<<<<< SEARCH\n{anchor}\n=======\n{anchor}\n    # idea {k}\n"
        ">>>>>>> REPLACE\n"
    )


@dataclass(frozen=True)
class Slot:
    trials: int
    ran: int
    requests: int
    mean_run_s: float
    busy_s: float
    window_s: float
    gaps_s: list[float]

    @property
    def share(self) -> float:
        return self.busy_s / self.window_s


def slot_run(lab: str, path: str, anchor: str, epochs: int | None, trials: int, tmp: Path) -> Slot:
    """Two llm agents on one slot of `lab`, each model answer THINK_S late."""
    env = {**environment(tmp, 1), "BENCH_FAKE_KEY": "sk-bench"}
    with FakeProvider("openai") as fake:
        fake.enqueue(*(Reply(text=note(k, path, anchor)) for k in range(1, 4 * trials)))
        fake.fault("delay", seconds=THINK_S, times=None)
        root = example(
            lab, tmp / f"{lab}-slot", env, epochs=epochs,
            lab={"parallel": "1"}, agents=SLOT_CONFIG.format(url=fake.url),
        )  # fmt: skip
        cli(["run", str(root), "--trials", str(trials), "--no-ui"], env)
        requests = sum(1 for r in fake.requests if r["path"] == "/v1/chat/completions")
    store = open_store(store_url(root))
    try:
        run = store.latest_run(lab)
        assert run is not None
        done = [t for t in store.trials(run.id) if t.agent != BASELINE]
    finally:
        store.close()
    ran = sorted(
        (t for t in done if t.started_at is not None and t.duration_s is not None),
        key=lambda t: t.started_at or 0.0,
    )
    # (a trial's experiment: from its start, for the time its run and evaluate took)
    spans = [(t.started_at or 0.0, (t.started_at or 0.0) + (t.duration_s or 0.0)) for t in ran]
    return Slot(
        trials=len(done),
        ran=len(ran),
        requests=requests,
        mean_run_s=statistics.fmean(t.duration_s or 0.0 for t in ran),
        busy_s=sum(end - start for start, end in spans),
        window_s=spans[-1][1] - spans[0][0],
        gaps_s=[max(0.0, b[0] - a[1]) for a, b in itertools.pairwise(spans)],
    )


def slot(tmp: Path, trials: int) -> None:
    print(
        f"\nslot: two llm agents sharing one experiment slot (parallel = 1), the fake model "
        f"answering each request after {THINK_S:g} s; utilization = the experiments' time / "
        "the wall time from the first agent trial's start to the last one's end",
        flush=True,
    )
    spirals = slot_run("spirals", "train.py", "def train() -> None:", SLOT_EPOCHS, trials, tmp)
    tsp = slot_run("tsp", "solve.py", "def main() -> None:", None, trials, tmp)
    for name, r in (("spirals", spirals), ("tsp", tsp)):
        # each agent thinks, then runs; the other thinks meanwhile: in the long run two
        # agents can fill the slot only when an experiment lasts at least as long as an answer
        limit = min(1.0, 2 * r.mean_run_s / (THINK_S + r.mean_run_s))
        print(
            f"  {name:<8} {r.trials} trials ({r.ran} ran), {r.requests} model requests; "
            f"experiment {r.mean_run_s:.2f} s on average; slot busy {r.busy_s:.1f} s of "
            f"{r.window_s:.1f} s = {r.share:.1%} (the long-run limit with two agents thinking "
            f"{THINK_S:g} s each: about {limit:.0%}); gap between experiments median "
            f"{statistics.median(r.gaps_s) * 1000:.0f} ms, max {max(r.gaps_s) * 1000:.0f} ms",
            flush=True,
        )
    print(
        f"  target: slot utilization >= 95% while the agents think (spirals: an experiment "
        f"longer than a model's answer) -> {'met' if spirals.share >= 0.95 else 'NOT met'} "
        f"({spirals.share:.1%}); tsp's experiments are shorter than an answer, so there the "
        "agents' thinking, not the lab, leaves the slot idle",
        flush=True,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="2 seeds, half the trials")
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument(
        "--first-seed", type=int, default=1, help="seeds FIRST..FIRST+N-1 (fresh ones: a check)"
    )
    parser.add_argument(
        "--configs",
        default="one,none,best",
        help="of one (one agent), none and best (two agents, share none/best); none and best "
        "are needed for the verdict",
    )
    parser.add_argument("--part", default="search,noise,slot")
    parser.add_argument("--labs", default="spirals,tsp", help="the labs the search part runs")
    parser.add_argument(
        "--jobs", type=int, default=3, help="labs searched at once (their runs share a second)"
    )
    args = parser.parse_args()
    exit_on_sigterm()
    parts = set(args.part.split(","))
    first = args.first_seed
    seeds = list(range(first, first + (2 if args.quick else args.seeds)))
    configs = [SHORT[name] for name in args.configs.split(",")]
    if not {"two, share none", "two, share best"} <= set(configs):
        parser.error("--configs must include none and best (the verdict compares them)")
    print(machine_line())
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="overnight-research-") as name:
        tmp = Path(name)
        try:
            tsp = (
                search(args.labs.split(","), seeds, tmp, args.quick, args.jobs, configs)
                if "search" in parts
                else {}
            )
            if "noise" in parts:
                noise(tsp, tmp, 10 if args.quick else NOISE_RUNS)
            if "slot" in parts:
                slot(tmp, SLOT_TRIALS // 2 if args.quick else SLOT_TRIALS)
        finally:
            stop_children()
    print(f"\ntotal {time.monotonic() - started:.0f} s")


if __name__ == "__main__":
    main()
