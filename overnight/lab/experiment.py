"""A trial's experiment: the lab's command run under its budget, and what its run says.

Owns running what a trial measures — `[lab] run` (then `evaluate`) in the agent's
worktree, or `[lab] holdout` in a clean checkout — each in an executor slot, inside
the lab's enclosure, once there is room on disk for its log; killing what it leaves
behind; and classifying a run's result (`classify`): a metric, or the status and
reason that end the trial (crashed, timed out, interrupted, rejected when the run
touched a protected file). With `[executor] kind = "ray"` the run, and the holdout, are
tasks on a Ray cluster instead (`overnight.lab.cluster`). Whether a measured trial is kept is the lab's
to decide.
Knows nothing about proposals, git or governance.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from overnight.lab import cluster, holdout, integrity
from overnight.lab.disk import FreeSpace, TrialLogs, log_room
from overnight.lab.enclosure import Enclosure
from overnight.lab.executor import LocalExecutor
from overnight.lab.git import Git
from overnight.lab.runner import RunResult, kill_marked, run_budgeted
from overnight.markers import AGENT_MARKER, RUN_MARKER, TRIAL_MARKER, run_mark
from overnight.org.config import VRAM, LabConfig
from overnight.paths import StateDir
from overnight.records import IN_FLIGHT, Trial, TrialStatus
from overnight.store import Store

_S = TrialStatus


@dataclass(frozen=True)
class Measured:
    """One run of a trial's experiment: its metric, or the status and reason that end
    the trial (`failure`), with what else it printed and its peak memory."""

    metric: float | None
    failure: TrialStatus | None
    reason: str | None
    tail: str
    duration_s: float
    recorded: Mapping[str, float] = field(default_factory=dict)
    peak_rss_mb: float | None = None


def classify(
    result: RunResult,
    step: str,
    metric: str,
    timeout: float,
    stopped: bool,
    tampered: str | None,
) -> Measured:
    """What a finished run (of `step`, "run" or "evaluate") says of its trial."""

    def failed(status: TrialStatus, reason: str) -> Measured:
        return Measured(
            None, status, reason, result.tail, result.duration_s, result.recorded,
            result.peak_rss_mb,
        )  # fmt: skip

    if tampered:
        return failed(_S.rejected, f"integrity: the run {tampered}")
    if stopped:
        return failed(_S.interrupted, "stopped while running")
    if result.timed_out:
        return failed(_S.timed_out, f"{step} killed after {timeout:.0f}s (budget + grace)")
    if result.exit_code != 0:
        code = result.exit_code
        hint = " (command not found)" if code == 127 else ""
        return failed(_S.crashed, f"{step} exited with code {code}{hint}")
    if result.metric is None:
        return failed(_S.crashed, f"no `{metric}: <number>` line in the {step} output")
    if result.metric != result.metric or result.metric in (float("inf"), float("-inf")):
        return failed(_S.crashed, f"{metric} is {result.metric}")
    return Measured(
        result.metric, None, None, result.tail, result.duration_s, result.recorded,
        result.peak_rss_mb,
    )  # fmt: skip


def memory_fields(runs: Sequence[Measured]) -> dict[str, Any]:
    """What a trial's runs printed besides the metric (the mean of each value over the runs
    that printed it, as the metric is their mean) and its peak memory (the largest): a
    printed peak_vram_mb / 1024, as autoresearch's memory_gb, else the measured peak RSS."""
    values: dict[str, list[float]] = {}
    for run in runs:
        for name, value in run.recorded.items():
            values.setdefault(name, []).append(value)
    rss = [r.peak_rss_mb for r in runs if r.peak_rss_mb is not None]
    peak_rss = max(rss) if rss else None
    vram = values.get(VRAM)
    memory = max(vram) / 1024 if vram else (peak_rss / 1024 if peak_rss is not None else None)
    return {
        "recorded": {name: sum(v) / len(v) for name, v in values.items()},
        "memory_gb": memory,
        "peak_rss_mb": peak_rss,
    }


class Experiments:
    """Runs the experiments of one run of a lab, `[lab] parallel` at a time."""

    def __init__(
        self,
        config: LabConfig,
        store: Store,
        run_id: str,
        protected: Mapping[str, str],
        paths: StateDir,
        enclosure: Enclosure,
        holdout: holdout.Holdout | None,
        remote: cluster.Cluster | None = None,
    ) -> None:
        self.config = config
        self.store = store
        self.run_id = run_id
        self.mark = run_mark(paths.path.parent, run_id)  # (the lab's folder holds its state)
        self.protected = protected
        self.paths = paths
        self.enclosure = enclosure
        self.holdout = holdout
        self.executor = LocalExecutor(config.parallel, paths.slots, config.gpus_per_trial)
        self.cluster = remote
        """`[executor] kind = "ray"`: where experiments run instead of this machine's slots."""
        if remote is not None:  # an outage, and its end, on the run's record
            remote.on_change = self._record
        self.deadline: float | None = None
        """When this run stops starting trials (time.monotonic(), the `--for` rule): a trial
        waiting for free disk space gives up then."""
        self.trial_logs = TrialLogs(paths.logs, config.max_logs)
        self.free_space = FreeSpace(
            paths.path, config.min_free_disk,
            lambda kind, payload: store.append_event(run_id, kind, payload),
        )  # fmt: skip

    def measure(
        self,
        trial: Trial,
        worktree: Path,
        stop: threading.Event,
        archive: bytes | None = None,
        on_running: Callable[[], None] | None = None,
    ) -> Measured:
        """Run the lab's command (then `evaluate`) once on `worktree`, recording the trial
        `running` with its log and pid; on the cluster when the lab has one (`archive`:
        the candidate's files as a tar, when they were packed ahead). `on_running` hears
        when the experiment has started."""
        if self.cluster is not None:
            return self._measure_on_cluster(
                self.cluster, trial, worktree, stop, archive, on_running
            )
        lab = self.config
        log_path = self.paths.trial_log(self.run_id, trial.number)
        timeout = lab.budget + lab.grace
        with self.executor.slot(stop) as slot_env:
            if slot_env is None or not self._disk_room(stop):
                return Measured(None, _S.interrupted, "stopped before it ran", "", 0.0)
            self.store.update_trial(
                trial.id, _S.running, log_path=str(log_path), started_at=time.time()
            )
            env = self._env(trial, slot_env)
            wrap = self.enclosure.wrap(worktree, timeout)

            def record_pid(pid: int) -> None:
                self.store.update_trial(trial.id, _S.running, pid=pid)
                if on_running is not None:
                    on_running()

            watch = [*lab.record, *([VRAM] if VRAM not in (*lab.record, lab.metric) else [])]
            result = run_budgeted(
                lab.run, cwd=worktree, log_path=log_path, timeout_s=timeout, metric=lab.metric,
                env=env, wrap=wrap, max_log=lab.max_log, on_start=record_pid, stop=stop,
                record=watch,
            )  # fmt: skip
            if result.timed_out or stop.is_set():
                self._kill_leftovers(trial)
            step = "run"
            if result.ok and lab.evaluate and not stop.is_set():
                step = "evaluate"
                with log_path.open("a") as fh:
                    fh.write(f"\n[overnight: evaluate: {lab.evaluate}]\n")
                evaluated = run_budgeted(
                    lab.evaluate, cwd=worktree, log_path=log_path, timeout_s=timeout,
                    metric=lab.metric, env=env, wrap=wrap, max_log=lab.max_log, stop=stop,
                    record=watch,
                )  # fmt: skip
                result = result.followed_by(evaluated)
        tampered = integrity.check_protected(worktree, self.protected)
        return classify(result, step, lab.metric, timeout, stop.is_set(), tampered)

    def _measure_on_cluster(
        self,
        remote: cluster.Cluster,
        trial: Trial,
        worktree: Path,
        stop: threading.Event,
        archive: bytes | None = None,
        on_running: Callable[[], None] | None = None,
    ) -> Measured:
        """`measure`, with the experiment a task on the cluster: the candidate commit
        travels there, the log streams back into the trial's log, the protected files'
        hashes come back for the integrity guard. A lost node interrupts the trial with a
        reason that begins with `cluster.NODE_LOST` (it is run again at once)."""
        lab = self.config
        log_path = self.paths.trial_log(self.run_id, trial.number)
        timeout = lab.budget + lab.grace
        if not self._disk_room(stop) or not self.wait_for_cluster(remote, trial.agent, stop):
            return Measured(None, _S.interrupted, "stopped before it ran", "", 0.0)
        commit = trial.candidate_commit or Git(worktree).head()
        watch = (*lab.record, *((VRAM,) if VRAM not in (*lab.record, lab.metric) else ()))
        experiment = cluster.Experiment(
            mark=self.mark, trial=trial.number, steps=cluster.steps_of(lab),
            metric=lab.metric, record=watch, timeout_s=timeout, max_log=lab.max_log,
            env=self._env(trial, {}), protected=tuple(self.protected),
            walls=self.enclosure.walls_abroad(),
        )  # fmt: skip
        # written ahead: a resume finds what was sent, and where it started
        self.store.append_event(
            self.run_id, "trial.dispatched",
            {"executor": "ray", "address": remote.config.address, "commit": commit},
            agent=trial.agent, trial=trial.number,
        )  # fmt: skip

        def started(where: cluster.Placed) -> None:
            self.store.append_event(
                self.run_id, "trial.placed", where.payload(), agent=trial.agent, trial=trial.number
            )
            self.store.update_trial(
                trial.id, _S.running, log_path=str(log_path), started_at=time.time()
            )
            if on_running is not None:
                on_running()

        if archive is None:
            archive = cluster.archive_of(worktree, commit)
        outcome = remote.measure(experiment, archive, log_path, stop, started)
        if outcome.lost is not None:
            placed = outcome.placed
            self.store.append_event(
                self.run_id, "executor.node_lost",
                {"node": placed.node if placed else None, "host": placed.host if placed else None,
                 "why": outcome.lost},
                agent=trial.agent, trial=trial.number,
            )  # fmt: skip
            reason = f"{cluster.NODE_LOST}: {outcome.lost}"
            return Measured(None, _S.interrupted, reason, "", 0.0)
        if outcome.unreachable is not None:
            reason = f"{cluster.UNREACHABLE}: {outcome.unreachable}"
            return Measured(None, _S.interrupted, reason, "", 0.0)
        if outcome.result is None:
            return Measured(None, _S.interrupted, "stopped while running", "", 0.0)
        tampered = integrity.check_hashes(outcome.protected, self.protected)
        return classify(outcome.result, outcome.step, lab.metric, timeout, stop.is_set(), tampered)

    def _record(self, kind: str, payload: dict[str, Any]) -> None:
        self.store.append_event(self.run_id, kind, payload)

    def wait_for_cluster(self, remote: cluster.Cluster, agent: str, stop: threading.Event) -> bool:
        """While the cluster is unreachable, agent `agent` is paused (as in a brownout of
        its model route) and waits; False if stopped first."""
        remote.watch()
        if remote.up.is_set():
            return True
        why = f"the Ray cluster at {remote.config.address} is unreachable"
        self.store.set_agent_state(self.run_id, agent, "paused", reason=why)
        back = remote.wait_up(stop)
        if back:
            self.store.set_agent_state(self.run_id, agent, "working", reason="the cluster is back")
        return back

    def measure_holdout(
        self, trial: Trial, commit: str, stop: threading.Event
    ) -> holdout.Measured | None:
        """Run the hidden holdout on `commit` (a `holdout.started` event first); None if
        stopped before it could start. On the cluster when the lab has one."""
        assert self.holdout is not None
        if self.cluster is not None:
            return self._holdout_on_cluster(self.cluster, self.holdout, trial, commit, stop)
        lab = self.config
        log_path = self.paths.trial_log(self.run_id, trial.number, holdout=True)
        timeout = lab.budget + lab.grace
        with self.executor.slot(stop) as slot_env:
            if slot_env is None:
                return None
            self.store.append_event(
                self.run_id, "holdout.started", {"commit": commit, "log": str(log_path)},
                agent=trial.agent, trial=trial.number,
            )  # fmt: skip
            measured = self.holdout.measure(
                commit, f"trial-{trial.number:05d}", log_path=log_path,
                env=self._env(trial, slot_env),
                wrap=lambda checkout: self.enclosure.wrap(checkout, timeout),
                timeout_s=timeout, max_log=lab.max_log, stop=stop,
            )  # fmt: skip
            if measured.problem:
                self._kill_leftovers(trial)
        return measured

    def _holdout_on_cluster(
        self,
        remote: cluster.Cluster,
        judge: holdout.Holdout,
        trial: Trial,
        commit: str,
        stop: threading.Event,
    ) -> holdout.Measured | None:
        """`measure_holdout` as a task on the cluster: the commit and the hidden files travel
        to the node for this run only (its checkout there is deleted when it ends), the log
        streams back into the holdout's log. A lost node runs it again once elsewhere."""
        lab = self.config
        log_path = self.paths.trial_log(self.run_id, trial.number, holdout=True)
        timeout = lab.budget + lab.grace
        hidden = judge.pack()
        if hidden is None:
            return holdout.Measured(None, f"no hidden file left in {judge.root}", 0.0, log_path)
        experiment = cluster.Experiment(
            mark=self.mark, trial=trial.number, steps=(("holdout", judge.command),),
            metric=judge.metric, record=(), timeout_s=timeout, max_log=lab.max_log,
            env=self._env(trial, {}), protected=(), walls=self.enclosure.walls_abroad(),
        )  # fmt: skip
        self.store.append_event(
            self.run_id, "holdout.started",
            {"commit": commit, "log": str(log_path), "executor": "ray",
             "address": remote.config.address},
            agent=trial.agent, trial=trial.number,
        )  # fmt: skip

        def started(where: cluster.Placed) -> None:
            self.store.append_event(
                self.run_id,
                "holdout.placed",
                where.payload(),
                agent=trial.agent,
                trial=trial.number,
            )

        archive = cluster.archive_of(judge.root, commit)
        for _ in range(2):
            outcome = remote.measure(experiment, archive, log_path, stop, started, hidden)
            if outcome.lost is None:
                break
            placed = outcome.placed
            self.store.append_event(
                self.run_id, "executor.node_lost",
                {"node": placed.node if placed else None, "host": placed.host if placed else None,
                 "why": outcome.lost, "holdout": True},
                agent=trial.agent, trial=trial.number,
            )  # fmt: skip
        if outcome.result is None:
            if stop.is_set():
                return None
            why = f"{cluster.NODE_LOST}: {outcome.lost}" if outcome.lost else "it did not finish"
            return holdout.Measured(None, why, 0.0, log_path)
        return judge.verdict(outcome.result, stop.is_set(), timeout, log_path)

    def _env(self, trial: Trial, slot_env: Mapping[str, str]) -> dict[str, str]:
        """The experiment's environment: its slot's, and the markers that find what it
        leaves behind."""
        return self.enclosure.env(
            {
                **slot_env,
                RUN_MARKER: self.mark,
                TRIAL_MARKER: str(trial.number),
                AGENT_MARKER: trial.agent,
            }
        )

    def _kill_leftovers(self, trial: Trial) -> None:
        """Kill what is left of a trial's experiment (or holdout) once its process group is
        gone: what left the group (setsid, a daemon) or outlived the kill carries the
        trial's markers."""

        def others(found: dict[str, str]) -> bool:
            return found.get(TRIAL_MARKER) != str(trial.number) or (
                found.get(AGENT_MARKER) != trial.agent
            )

        kill_marked(RUN_MARKER, self.mark, spare=others)

    def _disk_room(self, stop: threading.Event) -> bool:
        """Room on disk for one more trial: older logs trimmed to fit `max_logs`, then
        wait for `min_free_disk`; False if stopped (or out of time) first."""
        lab = self.config
        live = {
            t.log_path for t in self.store.trials(self.run_id, statuses=IN_FLIGHT) if t.log_path
        }
        self.trial_logs.make_room(
            log_room(lab.max_log, 2 if lab.evaluate else 1, lab.parallel), live
        )
        return self.free_space.wait(stop, self.deadline)
