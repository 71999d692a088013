"""The supervisor: runs a lab's in-process agents on threads until the stop rules say so.

Owns the agent loop (a generator of finished trials), the shared allowance of
trials and time for one invocation, keeping external agents' terminal sessions
running, pause / resume / restart from outside (`AgentControl`), and a clean stop:
a stop request kills the running experiments, which are recorded `interrupted` and
re-queued by the next start (each back to the agent that made it: `requeued`).
Knows nothing about the CLI or how the progress is shown.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import os
import sys
import threading
import time
from collections.abc import Callable, Generator, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from overnight.agents.brownout import PROBE_EVERY_S, GatewayRoutes, RideOut, RouteWatch
from overnight.agents.pause import ANOMALY_PAUSE, PAUSE_FILE, USER_PAUSE, by_person, why_paused
from overnight.agents.requeued import Requeued
from overnight.costs.anomaly import RESUMED, RunWatch
from overnight.costs.forecast import record_every
from overnight.costs.overview import ALLOWANCE, ANOMALY, FORECAST, run_forecast
from overnight.errors import UserError
from overnight.governance.governor import Governor
from overnight.lab.ahead import Prepared
from overnight.lab.git import Git
from overnight.lab.lab import Lab
from overnight.lab.proposal import Proposal, ProposalError, ProposerUnavailable
from overnight.lab.runner import kill_marked
from overnight.lab.sharing import Sharing
from overnight.lab.stop import CRASH_PAUSE, Stop, StopRules, agents_done, by_time, by_trials
from overnight.markers import AGENT_MARKER, RUN_MARKER, SESSION_MARKER, run_mark
from overnight.org.config import OnAnomaly
from overnight.proposers import Proposer, ProposerSetup, create, in_terminal, runtime
from overnight.records import AgentRecord, Trial, TrialStatus
from overnight.sessions import default_backend
from overnight.sessions.base import Session


@dataclass(frozen=True)
class Services:
    """What the agents need to know of the services running beside them."""

    gateway_url: str | None = None
    key_files: dict[str, Path] = field(default_factory=dict)
    """Each agent's virtual-key file for the gateway."""
    gateway: GatewayRoutes | None = None
    """The running gateway app, to watch route health."""
    control: AgentControl | None = None
    """Pause / resume / restart requests from the command center (see AgentControl)."""
    governor: Governor | None = None
    """The lab's governance, for the web app."""


class Allowance:
    """How many more trials may start, and until when (shared by all agents)."""

    def __init__(self, trials: int | None, seconds: float | None) -> None:
        self._left = trials
        self.closed = False
        """No more trials start: a stop rule ended the run."""
        self.deadline = time.monotonic() + seconds if seconds is not None else None
        self.started = time.monotonic()
        self._lock = threading.Lock()

    def take(self, stop: threading.Event, spare: int = 0) -> bool:
        """One more trial may start (and is counted); with `spare`, only if more than that
        many would be left for others (a trial taken ahead must not leave an agent without
        one)."""
        with self._lock:
            if stop.is_set() or self.closed:
                return False
            if self.deadline is not None and time.monotonic() >= self.deadline:
                return False
            if self._left is not None:
                if self._left <= spare:
                    return False
                self._left -= 1
            return True

    def open(self, stop: threading.Event) -> bool:
        """Whether a trial taken already may still start (no stop, rule or deadline since)."""
        if stop.is_set() or self.closed:
            return False
        return self.deadline is None or time.monotonic() < self.deadline

    def spent(self) -> bool:
        """Whether `--trials` ran out."""
        with self._lock:
            return self._left is not None and self._left <= 0

    def close(self) -> None:
        """Start no more trials; those running finish."""
        self.closed = True

    def give_back(self) -> None:
        """Return a taken trial that was never tried."""
        with self._lock:
            if self._left is not None:
                self._left += 1


def agent_loop(
    lab: Lab,
    name: str,
    proposer: Proposer,
    allowance: Allowance,
    stop: threading.Event,
    watch: RouteWatch | None = None,
    optimizer: Proposer | None = None,
    control: AgentControl | None = None,
    sharing: Sharing | None = None,
) -> Generator[Trial, None, None]:
    """One agent's work: propose, run, learn; yields each finished trial.

    With `watch` (an LLM agent behind the gateway), a brownout of its route pauses
    it, or runs `optimizer` in its place, until the route answers again. On a Ray
    cluster that goes unreachable it is paused until the cluster is back. With
    `control`, a pause asked for from outside holds it between trials. With
    `sharing`, it may move to the lab's best between trials.
    """
    worktree = Path(lab.agent(name).worktree)
    upcoming = _Upcoming(lab, name, proposer, allowance, stop)
    heard: list[Trial] = []  # (the last trial, while its proposer has yet to hear of it)

    def hear() -> None:
        while heard:
            proposer.observe(heard.pop())

    try:
        while not stop.is_set():
            if control is not None and control.hold(name, stop):
                continue
            if watch is not None and watch.down():
                hear()
                yield from _ride_out(lab, name, watch, optimizer, allowance, stop)
                continue
            remote = lab.experiments.cluster
            if remote is not None and not lab.experiments.wait_for_cluster(remote, name, stop):
                return
            if not upcoming.reserved and not allowance.take(stop):
                return
            if upcoming.reserved and not allowance.open(stop):
                return
            prepared = upcoming.take()
            if prepared is None:
                hear()  # (before it proposes)
            asked: list[Trial | None] = [None]  # (the trial a fresh proposal was asked for)

            def fresh(trial: Trial, asked: list[Trial | None] = asked) -> Proposal:
                asked[0] = trial
                return proposer.propose(worktree, trial)

            def running(asked: list[Trial | None] = asked) -> None:
                """The trial's experiment runs: the proposer hears of the last trial and
                makes the next candidate now, not before (its CPU would slow the start)."""
                hear()
                upcoming.start(asked[0])  # the next one is made while this one runs

            try:
                trial = lab.run_trial(name, prepared or fresh, stop, on_running=running)
            except ProposerUnavailable as exc:
                allowance.give_back()  # nothing was tried
                upcoming.withdraw()
                if exc.brownout and watch is not None:
                    continue  # the route is down: ride it out above
                if exc.retry_after is not None:  # rate-limited: wait as told, not hammering
                    until = time.time() + exc.retry_after
                    lab.store.set_agent_state(
                        lab.run.id, name, "waiting", reason=str(exc), until=until
                    )
                    if stop.wait(exc.retry_after):
                        return
                    lab.store.set_agent_state(lab.run.id, name, "working")
                    continue
                lab.store.set_agent_state(lab.run.id, name, "paused", reason=str(exc))
                return
            upcoming.wait()  # (the proposer hears of this trial after it made the next)
            hear()  # (the one before, should this trial not have run)
            heard.append(trial)
            if not upcoming.ahead():  # (it proposes the next one from this result)
                hear()
            yield trial
            if trial.status is TrialStatus.interrupted:
                return
            adoption = sharing.consider(name) if sharing is not None else None
            if adoption is not None:  # its next proposals start at the lab's best
                hear()
                upcoming.withdraw()  # (made on the commit it left)
                best = lab.store.trials(lab.run.id, statuses=[TrialStatus.kept])
                adopted = next(t for t in best if t.number == adoption.to_trial)
                for thinker in (proposer, optimizer):
                    if thinker is not None:
                        thinker.adopted(worktree, adopted)
    finally:
        upcoming.withdraw()
        if upcoming.made_any:
            lab.drop_ahead(name)
        hear()


class _Upcoming:
    """An agent's next candidate, made while its current trial runs, when its proposer
    can propose without the last result (`ahead`): see `overnight.lab.ahead`. Its trial
    is taken from the allowance when the making starts (none is made while the other
    agents could want what is left), and given back if it is withdrawn."""

    def __init__(
        self, lab: Lab, name: str, proposer: Proposer, allowance: Allowance, stop: threading.Event
    ) -> None:
        self.lab, self.name, self.proposer, self.stop = lab, name, proposer, stop
        self.allowance = allowance
        self.reserved = False
        """Whether the next trial was taken from the allowance already."""
        self.made_any = False
        self._thread: threading.Thread | None = None
        self._made: Prepared | None = None
        self._error: BaseException | None = None

    def ahead(self) -> bool:
        """Whether the proposer can propose the next candidate before the last result."""
        ahead = getattr(self.proposer, "ahead", None)
        return callable(ahead) and bool(ahead())

    def start(self, trial: Trial | None) -> None:
        """Begin making the next candidate (the proposer is asked with `trial`, the one
        running, or none), unless the proposer needs that trial's result first."""
        if self._thread is not None or not self.ahead():
            return
        if not self.allowance.take(self.stop, spare=len(self.lab.agents())):
            return
        self.reserved = True
        self.made_any = True

        def make() -> None:
            try:
                self._made = self.lab.prepare(
                    self.name,
                    lambda where: self.proposer.propose(where, trial),  # type: ignore[arg-type]
                )
            except ProposalError:
                pass  # proposed again when its turn comes, which records why
            except BaseException as exc:
                self._error = exc

        self._thread = threading.Thread(target=make, name=f"ahead-{self.name}", daemon=True)
        self._thread.start()

    def wait(self) -> None:
        """Until the making is done (raises what went wrong in it)."""
        thread, self._thread = self._thread, None
        if thread is not None:
            thread.join()
        error, self._error = self._error, None
        if error is not None:
            raise error

    def take(self) -> Prepared | None:
        """The candidate made ahead, if it still starts where the agent stands; its trial
        is then the one taken from the allowance."""
        self.wait()
        self.reserved = False
        made, self._made = self._made, None
        if made is not None and made.parent != self.lab.agent(self.name).best_commit:
            self._withdraw(made)  # its trial was kept: the agent moved on
            return None
        return made

    def withdraw(self) -> None:
        """Drop the candidate made ahead (the agent moves, the run ends): the proposer
        hears it, and its trial goes back to the allowance."""
        try:
            self.wait()
        finally:
            if self.reserved:
                self.reserved = False
                self.allowance.give_back()
            made, self._made = self._made, None
            if made is not None:
                self._withdraw(made)

    def _withdraw(self, made: Prepared) -> None:
        withdraw = getattr(self.proposer, "withdraw", None)
        if callable(withdraw):
            withdraw(made.proposal)


def _ride_out(
    lab: Lab,
    name: str,
    watch: RouteWatch,
    optimizer: Proposer | None,
    allowance: Allowance,
    stop: threading.Event,
) -> Iterator[Trial]:
    """A built-in agent's brownout: its optimizer's trials meanwhile, as the allowance
    lets them start, until its route answers again."""
    worktree = Path(lab.agent(name).worktree)

    def optimize(optimizer: Proposer) -> Trial | None:
        if not allowance.take(stop):
            return None
        trial = lab.run_trial(name, lambda t: optimizer.propose(worktree, t), stop)
        optimizer.observe(trial)
        return trial

    ride = RideOut(
        lab.store, lab.run.id, name, watch, stop,
        functools.partial(optimize, optimizer) if optimizer is not None else None,
    )  # fmt: skip
    with contextlib.closing(iter(ride)) as rounds:
        for trial in rounds:
            if trial is None:
                continue
            yield trial
            if trial.status is TrialStatus.interrupted:
                return
    if ride.recovered:
        lab.store.set_agent_state(lab.run.id, name, "working", reason="route recovered")


@dataclass
class Supervisor:
    lab: Lab
    trials: int | None = None
    seconds: float | None = None
    on_trial: Callable[[Trial], None] = lambda _t: None
    services: Services = field(default_factory=Services)
    stop_event: threading.Event = field(default_factory=threading.Event)
    finished: list[Trial] = field(default_factory=list)
    errors: list[BaseException] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.allowance = Allowance(self.trials, self.seconds)
        # a trial waiting for disk space stops then
        self.lab.experiments.deadline = self.allowance.deadline
        self._lock = threading.Lock()
        self._requeued = Requeued({})
        self.sharing = Sharing(self.lab)
        self.rules: StopRules | None = None
        """`[lab.stop]`, judging every trial once the baseline is measured."""
        self._ruled: Stop | None = None
        self._ticked = 0.0
        self.anomalies = RunWatch(self.lab.store, self.lab.run.lab, self.lab.run.id)
        """Each agent's spending against its own history (overnight.costs.anomaly)."""
        self._forecast_every = record_every(self.seconds)
        self._forecast_due = time.monotonic() + self._forecast_every

    def stopped_by(self) -> Stop:
        """The rule that ended the run (after `run` returned)."""
        if self._ruled is not None:
            return self._ruled
        if self.allowance.spent() and self.trials is not None:
            return by_trials(self.trials)
        deadline = self.allowance.deadline
        if deadline is not None and self.seconds is not None and time.monotonic() >= deadline:
            return by_time(self.seconds)
        return agents_done()

    def stop(self) -> None:
        self.stop_event.set()
        if self.services.control is not None:
            self.services.control.stop_all()

    def run(self) -> list[Trial]:
        """Baseline first, then every agent until the allowance or a stop ends it."""
        lab = self.lab
        proposers = self._proposers()
        measured_before = lab.baseline() is not None
        baseline = lab.ensure_baseline(self.stop_event)
        if baseline is None:
            return self.finished
        if not measured_before:
            self._report(baseline)
        if self.allowance.deadline is not None:  # for the cost forecast
            left = self.allowance.deadline - time.monotonic()
            lab.store.append_event(lab.run.id, ALLOWANCE, {"until": time.time() + left})
        self.rules = StopRules(lab)
        ruled = self.rules.at_start()
        if ruled is not None:
            self._halt(ruled)
            for proposer in proposers.values():
                _close(proposer)
            # terminal sessions that outlived the last run stop with this one, as at its end
            kill_marked(RUN_MARKER, run_mark(lab.org.root, lab.run.id))
            return self.finished
        for proposer in proposers.values():  # (a study shared by several hears it once)
            proposer.baseline(baseline, Path(lab.agents()[0].worktree))
        runtime_of = {a.name: a.runtime for a in lab.agents()}
        finished = [t for t in lab.store.trials(lab.run.id) if t.status.final]
        # each agent is handed back its own interrupted proposals (before any agent asks
        # for a new one: a proposer may tidy up what a stop left half-asked)
        for name, proposer in proposers.items():
            proposer.resume(
                [t for t in finished if runtime_of.get(t.agent) == runtime_of[name]],
                [t for t in lab.requeued if t.agent == name],
            )
        self._requeued = Requeued({t.number: t.agent for t in lab.requeued if t.agent in proposers})
        done = {name: threading.Event() for name in proposers}
        for name, proposer in proposers.items():
            threading.Thread(
                target=self._agent,
                args=(name, self._requeued.own(name, proposer), done[name]),
                name=f"agent-{name}",
            ).start()
        for agent in lab.agents():
            if runtime(agent.runtime).terminal:
                done[agent.name] = threading.Event()
                threading.Thread(
                    target=self._external, args=(agent.name, done[agent.name]),
                    name=f"agent-{agent.name}",
                ).start()  # fmt: skip
        # Wait on our own events, not Thread.join: a KeyboardInterrupt that lands
        # inside join() can leave the thread marked as finished while it still
        # runs (CPython 3.11), and we must not close the lab under a live agent.
        try:
            for event in done.values():
                while not event.wait(0.2):
                    self._tick()
        except KeyboardInterrupt:
            self.stop()
            for event in done.values():
                while not event.wait(0.2):
                    pass
            raise
        if self.errors:
            raise self.errors[0]
        return self.finished

    def _proposers(self) -> dict[str, Proposer]:
        return {
            agent.name: create(agent.runtime, self._setup(agent))
            for agent in self.lab.agents()
            if not runtime(agent.runtime).terminal  # those run in their own process
        }

    def _setup(self, agent: AgentRecord) -> ProposerSetup:
        lab = self.lab
        return ProposerSetup(
            config=lab.config,
            run_id=lab.run.id,
            agent=agent.name,
            store_url=lab.store.url,
            program=lab.org.program,
            root=lab.org.root,
            gateway_url=self.services.gateway_url,
            key_file=self.services.key_files.get(agent.name),
        )

    def _agent(self, name: str, proposer: Proposer, done: threading.Event) -> None:
        store, run_id = self.lab.store, self.lab.run.id
        control = self.services.control
        stop = control.stop_event(name, self.stop_event) if control else self.stop_event
        try:
            store.set_agent_state(run_id, name, "working")
            watch, optimizer = self._brownout_policy(name)
            while True:
                loop = agent_loop(
                    self.lab, name, proposer, self.allowance, stop, watch, optimizer, control,
                    self.sharing if self.sharing.enabled else None,
                )  # fmt: skip
                with contextlib.closing(loop):  # (what it made ahead is withdrawn at once)
                    for trial in loop:
                        self._report(trial)
                        if self.rules is not None and name in self.rules.paused:
                            break  # its crash streak: its work for this run is over
                if control is None or not control.restarting(name, self.stop_event):
                    break
        except BaseException as exc:
            self.errors.append(exc)
            self.stop()
            store.set_agent_state(run_id, name, "crashed", error=repr(exc))
        else:
            if self.lab.agent(name).state != "paused":  # paused says why; keep it
                store.set_agent_state(run_id, name, "idle")
        finally:
            _close(proposer)
            done.set()

    def _brownout_policy(self, name: str) -> tuple[RouteWatch | None, Proposer | None]:
        """How agent `name` rides out a brownout of its route: the route to watch (None
        when it has no LLM behind the gateway) and the optimizer to run meanwhile."""
        config = dict(self.lab.config.agent_names())[name]
        services = self.services
        key_file = services.key_files.get(name)
        if (
            config.model is None
            or services.gateway is None
            or services.gateway_url is None
            or key_file is None
        ):
            return None, None
        watch = RouteWatch(services.gateway, services.gateway_url, config.model, key_file)
        optimizer = None
        if config.on_brownout == "optimize":
            # it asks the lab's study, and may be the one handed another's re-queued point
            optimizer = self._requeued.own(
                name, create("optuna", self._setup(self.lab.agent(name)))
            )
        return watch, optimizer

    def _external(self, name: str, done: threading.Event) -> None:
        """Keep an external agent's terminal session running (re-attaching to one that
        outlived the last run, restarting a dead one with backoff), and report its trials."""
        try:
            ExternalSupervision(self, name).run()
        except BaseException as exc:
            self.errors.append(exc)
            self.stop()
            self.lab.store.set_agent_state(self.lab.run.id, name, "crashed", error=repr(exc))
        finally:
            done.set()

    def _report(self, trial: Trial) -> None:
        with self._lock:
            self.finished.append(trial)
        self.on_trial(trial)
        if self.rules is None:
            return
        verdict = self.rules.after(trial)
        if verdict.pause is not None and in_terminal(self.lab.agent(trial.agent).runtime):
            # an agent in a terminal holds at its next turn (its own process reads this)
            pause = self.lab.paths.agent_home(self.lab.run.id, trial.agent) / PAUSE_FILE
            pause.parent.mkdir(parents=True, exist_ok=True)
            pause.write_text(verdict.pause + "\n")
        if verdict.stop is not None:
            self._halt(verdict.stop)

    def _tick(self) -> None:
        """The rules that watch the clock and the spending, about once a second."""
        now = time.monotonic()
        if self.rules is None or now - self._ticked < 1.0:
            return
        self._ticked = now
        ruled = self.rules.tick()
        if ruled is not None:
            self._halt(ruled)
        self._watch_costs()
        self._record_forecast(now)

    def _watch_costs(self) -> None:
        """A `cost.anomaly` event for each anomaly; an agent with `on_anomaly = "pause"`
        is paused until a person resumes it, and one in a terminal has its running turn
        stopped too (see overnight.agents.pause)."""
        configs = dict(self.lab.config.agent_names())
        for anomaly in self.anomalies.poll():
            store, run_id, name = self.lab.store, self.lab.run.id, anomaly.agent
            config = configs.get(name)
            pause = config is not None and config.on_anomaly == OnAnomaly.pause
            store.append_event(run_id, ANOMALY, {**anomaly.payload(), "pause": pause}, agent=name)
            control = self.services.control
            if pause and control is not None and not control.paused_by_user(name):
                control.pause(name, f"{ANOMALY_PAUSE}: {anomaly.text}")

    def _record_forecast(self, now: float) -> None:
        """A `cost.forecast` event when one is due, for the report's forecast against
        actual (nothing to forecast without a gateway)."""
        lab = self.lab
        if lab.config.gateway is None or now < self._forecast_due:
            return
        self._forecast_due = now + self._forecast_every
        outlook = run_forecast(lab.store, lab.config, lab.run)
        lab.store.append_event(lab.run.id, FORECAST, outlook.record())

    def _halt(self, stop: Stop) -> None:
        """A stop rule fired (it is recorded): no trial starts any more; those running finish."""
        self._ruled = stop
        self.allowance.close()


def _close(proposer: Proposer) -> None:
    close = getattr(proposer, "close", None)
    if callable(close):
        close()


def session_name(root: Path, run_id: str, agent: str) -> str:
    """A terminal session name unique to this lab directory, run and agent."""
    tag = hashlib.sha1(str(root).encode()).hexdigest()[:8]
    name = f"ov-{tag}-{run_id}-{agent}"
    if len(name) > 64:
        name = name[:55] + "-" + hashlib.sha1(name.encode()).hexdigest()[:8]
    return name


class ExternalSupervision:
    """The supervisor's side of one external agent."""

    POLL_S = 0.25
    MAX_BACKOFF_S = 60.0

    def __init__(self, supervisor: Supervisor, name: str) -> None:
        self.sup = supervisor
        self.lab = supervisor.lab
        self.name = name
        self.backend = default_backend()
        self.session_name = session_name(self.lab.org.root, self.lab.run.id, name)
        self.home = self.lab.paths.agent_home(self.lab.run.id, name)
        self.home.mkdir(parents=True, exist_ok=True)
        self.watch, self.optimizer = supervisor._brownout_policy(name)
        self.seen: set[int] = set()

    def _collect(self) -> bool:
        """Report the agent's newly finished trials; False once the allowance is spent."""
        allowance = self.sup.allowance
        for trial in self.lab.store.trials(self.lab.run.id, agent=self.name):
            if trial.status.final and trial.number not in self.seen:
                self.seen.add(trial.number)
                self.sup._report(trial)
                if not allowance.take(threading.Event()):
                    return False
        if allowance.closed:
            return False
        return allowance.deadline is None or time.monotonic() < allowance.deadline

    def _ride_out(self) -> bool:
        """Hold the agent between turns while its route is down (optimizing in its
        worktree meanwhile, if so configured); False if the run should end."""
        assert self.watch is not None
        lab = self.lab
        pause = self.home / PAUSE_FILE
        ours = f"route {self.watch.alias!r} is in brownout\n"
        if not pause.exists():  # a pause by hand or by a stop rule outlasts ours
            pause.write_text(ours)
        ride = RideOut(
            lab.store, lab.run.id, self.name, self.watch, self.sup.stop_event,
            self._optimize if self.optimizer is not None else None,
        )  # fmt: skip
        try:
            with contextlib.closing(iter(ride)) as rounds:
                for _trial in rounds:  # (its trials are reported with the agent's own)
                    if not self._collect():
                        return False
            return ride.recovered
        finally:
            with contextlib.suppress(FileNotFoundError):
                if pause.read_text() == ours:
                    pause.unlink()

    def _optimize(self) -> Trial | None:
        """One optimizer trial in the agent's worktree, unless the agent has work of its
        own there (uncommitted changes, or a trial of its own in flight)."""
        assert self.optimizer is not None
        optimizer, lab = self.optimizer, self.lab
        agent = lab.agent(self.name)
        worktree = Git(Path(agent.worktree))
        if worktree.dirty() or worktree.head() != agent.best_commit:
            return None
        try:
            trial = lab.run_trial(
                self.name, lambda t: optimizer.propose(Path(agent.worktree), t), self.sup.stop_event
            )
        except UserError:
            return None  # its own `overnight try` holds the agent
        optimizer.observe(trial)
        return trial

    def _start(self) -> Session:
        lab = self.lab
        old = self.backend.get(self.session_name)
        if old is not None:
            old.kill()
        worktree = Path(lab.agent(self.name).worktree)
        # The agent process is ours (it writes the agent's states to the store), but it
        # runs the agent's CLI: it gets overnight's settings, never a provider credential.
        env = {
            **lab.enclosure.env({}),
            **{k: v for k, v in os.environ.items() if k.startswith("OVERNIGHT_")},
            RUN_MARKER: run_mark(lab.org.root, lab.run.id),
            SESSION_MARKER: self.session_name,
            AGENT_MARKER: self.name,
            "PATH": os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")]),
        }
        log = lab.paths.agent_home(lab.run.id, self.name) / "terminal.log"
        log.parent.mkdir(parents=True, exist_ok=True)
        return self.backend.start(
            self.session_name,
            [sys.executable, "-m", "overnight", "agent", str(worktree)],
            worktree,
            env,
            log=log,
        )

    def run(self) -> None:
        store, run_id = self.lab.store, self.lab.run.id
        stop = self.sup.stop_event
        pause = self.home / PAUSE_FILE
        if pause.is_file() and pause.read_text().startswith(CRASH_PAUSE):
            pause.unlink()  # a crash streak pauses an agent for one `overnight run`
        session = self.backend.get(self.session_name)
        if session is not None and session.alive():
            store.append_event(
                run_id, "agent.reattached", {"session": self.session_name}, agent=self.name
            )
        else:
            session = self._start()
            store.append_event(
                run_id, "agent.started", {"session": self.session_name}, agent=self.name
            )
        self.seen = {t.number for t in store.trials(run_id, agent=self.name) if t.status.final}
        backoff, started = 1.0, time.monotonic()
        pid = session.pid()
        control = self.sup.services.control
        try:
            while not stop.wait(self.POLL_S):
                if not self._collect():
                    return
                if control is not None:
                    control.settle(self.name)
                    if control.restarting(self.name, stop):
                        session.kill()
                        session = self._start()
                        pid, started = session.pid(), time.monotonic()
                        store.append_event(run_id, "agent.restarted",
                                           {"session": self.session_name, "by": "request"},
                                           agent=self.name)  # fmt: skip
                        continue
                if self.watch is not None and self.watch.down() and not self._ride_out():
                    return
                pid = pid or session.pid()
                if _pid_running(pid) if pid else session.alive():
                    continue
                status = session.exit_status()
                store.set_agent_state(run_id, self.name, "crashed",
                                      exit_status=status, restart_in_s=backoff)  # fmt: skip
                if time.monotonic() - started > 10 * self.MAX_BACKOFF_S:
                    backoff = 1.0  # it had been healthy for a long while
                if stop.wait(backoff):
                    return
                backoff = min(backoff * 2, self.MAX_BACKOFF_S)
                session = self._start()
                pid = session.pid()
                started = time.monotonic()
                store.append_event(run_id, "agent.restarted",
                                   {"session": self.session_name, "exit_status": status},
                                   agent=self.name)  # fmt: skip
        finally:
            session.kill()
            mark = run_mark(self.lab.org.root, run_id)
            kill_marked(RUN_MARKER, mark, spare=lambda env: env.get(AGENT_MARKER) != self.name)
            store.set_agent_state(run_id, self.name, "paused", reason="the run stopped")


def _pid_running(pid: int) -> bool:
    """Whether `pid` runs (a zombie has ended): a look in /proc, no tmux client per check,
    since the supervisor polls every agent several times a second."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] not in ("Z", "X")


# --- control: pause / resume / restart an agent from outside the supervisor ------------------
# What the command center's buttons call. One AgentControl per `overnight run`, shared by the
# supervisor's threads and whoever steers; every method may be called from any thread.
#
# A pause is a file, the same one a brownout uses for external agents (PAUSE_FILE in the
# agent's private directory), holding USER_PAUSE (or ANOMALY_PAUSE and the anomaly), so it
# survives a restart of `overnight run` and an external agent's own process honours it between
# turns (an anomaly's at once: overnight.agents.pause); a built-in agent honours it between
# trials (agent_loop). A restart ends the agent's current work at once: an external agent's
# terminal session is killed and started again (its conversation resumes); a built-in agent's
# running experiment is stopped (the trial is recorded `interrupted`) and its loop starts over.


class ControlRefused(UserError):
    """A pause, resume or restart that cannot be done now; the message says why."""


class UnknownAgent(ControlRefused):
    """No agent of the run has this name."""


class AgentControl:
    def __init__(self, lab: Lab) -> None:
        self.store = lab.store
        self.run_id = lab.run.id
        self.homes = lab.paths.agent_homes(lab.run.id)
        self.runtimes = {a.name: a.runtime for a in lab.agents()}
        self._cond = threading.Condition()
        self._restart: set[str] = set()
        self._stops: dict[str, threading.Event] = {}
        self._settled: set[str] = set()
        self._working: set[str] = set()
        """Built-in agents whose loop runs (one that ran out of trials has nothing to restart)."""

    def _check(self, name: str) -> None:
        if name not in self.runtimes:
            raise UnknownAgent(
                f"no agent named {name!r} in run {self.run_id}; "
                f"its agents are: {', '.join(sorted(self.runtimes)) or 'none'}"
            )

    def _pause_file(self, name: str) -> Path:
        return self.homes / name / PAUSE_FILE

    def paused_by_user(self, name: str) -> bool:
        """Paused until a person resumes it: from the command center, or for an anomaly."""
        return by_person(why_paused(self.homes / name))

    def _reason(self, name: str) -> str:
        return why_paused(self.homes / name) or USER_PAUSE

    def held(self) -> dict[str, Path]:
        """Agents paused from the command center (perhaps in an earlier `overnight run`),
        with the file that holds each: deleting it resumes the agent too."""
        return {n: self._pause_file(n) for n in sorted(self.runtimes) if self.paused_by_user(n)}

    def _state(self, name: str) -> str:
        return next((a.state for a in self.store.agents(self.run_id) if a.name == name), "idle")

    def pause(self, name: str, why: str = USER_PAUSE) -> None:
        """Hold the agent at its next trial (built-in) or turn (external) boundary; `why`
        is USER_PAUSE, or ANOMALY_PAUSE and the anomaly (which ends an external agent's
        running turn at once)."""
        self._check(name)
        if self.paused_by_user(name):
            raise ControlRefused(f"agent {name!r} is already paused")
        path = self._pause_file(name)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(why + "\n")
        self._settled.discard(name)
        self.store.append_event(self.run_id, "agent.pause_requested", {}, agent=name)
        if self._state(name) != "working":  # nothing to finish first
            self.store.set_agent_state(self.run_id, name, "paused", reason=why)
            self._settled.add(name)
        with self._cond:
            self._cond.notify_all()

    def resume(self, name: str) -> None:
        self._check(name)
        path = self._pause_file(name)
        if not self.paused_by_user(name):
            held = path.read_text().strip() if path.exists() else ""
            if held.startswith(CRASH_PAUSE):
                raise ControlRefused(f"agent {name!r} was paused by the stop rule {held}")
            if held:
                raise ControlRefused(
                    f"agent {name!r} is held by a brownout of its model route "
                    f"({held}); it resumes by itself when the route recovers"
                )
            raise ControlRefused(f"agent {name!r} is not paused")
        path.unlink(missing_ok=True)
        self.store.append_event(self.run_id, RESUMED, {}, agent=name)  # (its turn is over)
        if in_terminal(self.runtimes[name]) and self._state(name) == "paused":
            # its own process reports its next state; until then it is between turns
            self.store.set_agent_state(self.run_id, name, "idle", reason="resumed")
        with self._cond:
            self._cond.notify_all()

    def restart(self, name: str) -> None:
        self._check(name)
        with self._cond:
            if not in_terminal(self.runtimes[name]) and name not in self._working:
                raise ControlRefused(
                    f"agent {name!r} is not running in this `overnight run` (its work for the "
                    "run is done, or it has not started yet): there is nothing to restart"
                )
            self._restart.add(name)
            event = self._stops.get(name)
            self._cond.notify_all()
        self.store.append_event(self.run_id, "agent.restart_requested", {}, agent=name)
        if event is not None:
            event.set()

    # the supervisor's side ------------------------------------------------------------

    def stop_event(self, name: str, run_stop: threading.Event) -> threading.Event:
        """The event that stops agent `name`'s current work: set by a restart or by the
        supervisor's stop (`stop_all`)."""
        with self._cond:
            event = self._stops.setdefault(name, threading.Event())
            self._working.add(name)
            if run_stop.is_set():
                event.set()
            return event

    def stop_all(self) -> None:
        with self._cond:
            for event in self._stops.values():
                event.set()
            self._cond.notify_all()

    def restarting(self, name: str, run_stop: threading.Event) -> bool:
        """True (once) when a restart of `name` was asked for and the run goes on; the
        agent's stop event is cleared for its next start."""
        with self._cond:
            if name not in self._restart or run_stop.is_set():
                if not in_terminal(self.runtimes.get(name, "")):
                    self._working.discard(name)  # its loop has ended
                self._restart.discard(name)
                return False
            self._restart.discard(name)
            event = self._stops.get(name)
            if event is not None:
                event.clear()
        if not in_terminal(self.runtimes.get(name, "")):
            self.store.append_event(self.run_id, "agent.restarted", {"by": "request"}, agent=name)
            self.store.set_agent_state(self.run_id, name, "working", reason="restarted")
        return True

    def hold(self, name: str, stop: threading.Event) -> bool:
        """Block a built-in agent while it is paused; True if it was."""
        if not self.paused_by_user(name):
            return False
        if name not in self._settled:
            self.store.set_agent_state(self.run_id, name, "paused", reason=self._reason(name))
        while self.paused_by_user(name) and not stop.is_set():
            with self._cond:
                self._cond.wait(PROBE_EVERY_S)
        self._settled.discard(name)
        if not stop.is_set():
            self.store.set_agent_state(self.run_id, name, "working", reason="resumed")
        return True

    def settle(self, name: str) -> None:
        """An external agent asked to pause mid-turn is recorded `paused` once its turn is
        over (its process notices the pause only when it next means to start one)."""
        if name in self._settled or not self.paused_by_user(name):
            return
        if self._state(name) != "working":
            self.store.set_agent_state(self.run_id, name, "paused", reason=self._reason(name))
            self._settled.add(name)
