"""Trials on a Ray cluster (`[executor] kind = "ray"`): each experiment a Ray task.

Owns connecting to the cluster (one clear error when Ray is not installed or the
address does not answer), running one trial's experiment — `[lab] run`, then
`evaluate` — as a task on whichever node has the resources it asks for, and
finding what a dead `overnight run` left running on the nodes (`reap`).

- **The code travels as the commit**: `git archive` of the candidate, through Ray's
  object store, unpacked in a temporary folder on the worker. That is exactly the
  commit's tracked files: never the lab's `.overnight/` (keys, database), an agent's
  worktree or what it left untracked, and no git, shared disk or repository access
  needed on the worker. (Ray's `working_dir` would upload a folder, not a commit, and
  start a fresh worker process per distinct folder.)
- **On the worker, the budget is the local one**: `run_budgeted` starts the command in
  a process group of its own, kills all of it at budget + grace, measures its peak
  memory and finds the metric and recorded lines; the protected files are hashed after
  the run and the hashes come back, so the integrity guard's after-run check holds.
- **The log streams back while it runs**, through a relay: a small actor the lab starts
  on the head node (no CPU) when it joins. The task pushes where it started, then the
  log's new bytes as they are written (each push waits for the last: in order); the lab
  long-polls the relay for its trial's items and appends the bytes to the trial's own
  log. The result, with the log's last bytes and how many items were pushed, is the
  task's own return value (straight to the lab, not through the head), and a dead
  worker or node fails it, naming what died. One way for both kinds of address: a GCS
  address (`auto`, `HOST:6379`) and Ray Client's `ray://HOST:10001` (which cannot
  stream a generator task's items, the obvious way). The relay lives and dies with the
  lab's connection (its owner); on the head, it is lost only with the cluster.
- **Ray's own retries are off** (`max_retries=0`): the lab decides what a lost node
  means for a trial.
- **The hidden holdout runs as such a task too**, the hidden files packed beside the
  commit for that task only (`hidden`): unpacked over its checkout, in a temporary
  folder of the node deleted when the task ends; never in an experiment's task. (On the
  head it would need the GPUs `gpus_per_trial` asks for, which the head may not have.)
- **`ray://` (Ray Client)** joins from a machine outside the cluster through the one
  port of the head's Ray Client server: everything above is the same (tasks, relay,
  reaping), run by a driver Ray starts for the lab on the head.
- **An outage is ridden out**: the head's address is probed every CHECK_S; MISSES
  misses in a row and the cluster is *down* (`on_change` hears `executor.unreachable`),
  the trials in flight come back `unreachable` and no new one is sent. Once the head
  answers and a node can hold a trial again, the lab joins the cluster afresh (a
  restarted head is a new cluster to Ray), reaps what the cut-off trials left on the
  nodes, and says `executor.reachable`. Ray would end a driver whose head is gone for a
  minute (the whole `overnight run`): the lab's connection is told to wait for ever.

Knows nothing about trials' statuses or the store: the lab says what to run and
records what comes back (`on_event` is told of each step, to be written ahead).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import io
import logging
import os
import socket
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from overnight import redaction
from overnight.errors import ConfigError
from overnight.lab import integrity, sandbox
from overnight.lab.runner import RunResult, kill_marked, run_budgeted
from overnight.markers import RUN_MARKER, TRIAL_MARKER

if TYPE_CHECKING:  # (a worker imports this module for its task: it needs none of these)
    from overnight.org.config import LabConfig, OrgConfig
    from overnight.org.executor import ExecutorConfig

CHUNK = 64 * 1024
"""Most log bytes in one streamed item."""
POLL_S = 0.05
"""How often the worker looks for new log bytes (a first line reaches the lab within it)."""
TAKE_S = 0.2
"""Most seconds one long poll of the relay waits for a trial's items (how often the lab
looks at `stop`, the cluster's health and whether the task ended without its result)."""
CLIENT = "ray://"
"""How a Ray Client address begins."""
JOIN_S = 120.0
"""Most seconds joining through Ray Client may take before the cluster is said not to
answer (the head starts a driver for the lab: seconds, more on a loaded head)."""
FREED_MAX = 64
"""Most nodes remembered as where a trial just ended."""
WARM_MAX = 8
"""Most worker processes a node is asked to start ahead for trials (`Cluster._warm`)."""
WARM_S = 0.5
"""How long a warm-up task holds its worker process (longer than the others take to be
handed theirs: each gets a process of its own)."""
HEAD = {"node:__internal_head__": 0.001}
"""What pins the relay to the head node (Ray's own resource, on the head alone)."""
PROBE_S = 5.0
"""Seconds a start waits for the cluster's address to answer before saying it does not."""
INSTALL = "pip install 'overnight[ray]'"
NODE_LOST = "its cluster node was lost"
"""How the reason of a trial interrupted by a lost node begins (it is re-queued at once)."""
UNREACHABLE = "its Ray cluster went unreachable"
"""How the reason of a trial cut off by an outage begins (re-queued, it waits for the
cluster)."""
CHECK_S = 1.0
"""How often the head's address is probed while the lab is joined to the cluster."""
MISSES = 3
"""Probes in a row that find no head before the cluster is said to be down."""
RECONNECT_ENV = "RAY_gcs_rpc_server_reconnect_timeout_s"  # (Ray's spelling)
RECONNECT_S = str(10 * 365 * 24 * 3600)
"""How long Ray lets the lab's own connection wait for a lost head (Ray's 60 s would end
`overnight run`)."""


@dataclass(frozen=True)
class Experiment:
    """What a worker needs to run one trial's experiment: all of it plain data."""

    mark: str
    """The run's mark (`markers.run_mark`): what its experiments' processes carry."""
    trial: int
    steps: tuple[tuple[str, str], ...]
    """(step, command): ("run", ...), then ("evaluate", ...) when the lab has one."""
    metric: str
    record: tuple[str, ...]
    timeout_s: float
    max_log: int
    env: Mapping[str, str]
    protected: tuple[str, ...]
    """Paths whose hashes come back after the run."""
    walls: Mapping[str, Any] | None = None
    """The sandbox on the worker (writable, hidden, visible, network), where bwrap works
    there; None: the watchdog alone, as where no sandbox runs here."""


@dataclass(frozen=True)
class Placed:
    """Where a trial's experiment started."""

    node: str
    host: str
    task: str
    pid: int
    cuda: str | None

    def payload(self) -> dict[str, str | None]:
        """As a `trial.placed` or `holdout.placed` event records it."""
        return {"node": self.node, "host": self.host, "task": self.task,
                "cuda_visible_devices": self.cuda}  # fmt: skip


@dataclass(frozen=True)
class Outcome:
    """What came back: a finished run (its result, the step it ended in, the protected
    files' hashes after it), or why it did not finish (`lost`, `cancelled`)."""

    result: RunResult | None
    step: str = "run"
    protected: Mapping[str, str] = field(default_factory=dict)
    placed: Placed | None = None
    lost: str | None = None
    """Why the node or worker went away mid-trial (the trial is to be run again)."""
    unreachable: str | None = None
    """Why the cluster could not be reached mid-trial (run again once it is back)."""
    cancelled: bool = False


def of(config: OrgConfig, config_path: Path) -> Cluster | None:
    """The cluster `[executor]` names, not yet connected; None: trials run here."""
    if config.executor.kind != "ray":
        return None
    return Cluster(config.executor, config.lab, config_path)


class Cluster:
    """A Ray cluster that runs the experiments of one lab's trials."""

    def __init__(self, config: ExecutorConfig, lab: LabConfig, config_path: Path) -> None:
        self.config = config
        self.gpus = lab.gpus_per_trial
        self.config_path = config_path
        # how many at once: `[lab] parallel` when the file sets it, else what the cluster
        # holds (Ray queues a task until a node has its resources)
        limit = lab.parallel if "parallel" in lab.model_fields_set else None
        self._room = threading.BoundedSemaphore(limit) if limit else None
        self._room_size = limit or 0
        self._freed: collections.deque[str] = collections.deque(maxlen=FREED_MAX)
        """Nodes where a trial just ended, newest last (`_freed_node`)."""
        self._task: Any = None
        self._reaper: Any = None
        self._warmer: Any = None
        self._warmed = True
        """Whether this connection's nodes were asked to start workers (`_warm`); nothing
        to warm before there is a connection."""
        self._warming = threading.Lock()
        self._relay: Any = None
        self.up = threading.Event()
        """Set while the cluster answers (cleared by an outage, set again once it is back)."""
        self.on_change: Callable[[str, dict[str, Any]], None] = lambda kind, payload: None
        """Told `executor.unreachable` and `executor.reachable`, with their payloads."""
        self._marks: set[str] = set()
        self._head: tuple[str, int] | None = None
        self._watching = False
        self._down_at = 0.0
        self._outage = threading.Lock()

    def connect(self) -> None:
        """Join the cluster as a driver; a ConfigError says why it cannot."""
        if self._task is not None:
            return
        try:
            import ray
        except ImportError:
            raise ConfigError(
                self.config_path,
                'kind = "ray" runs trials on a Ray cluster, but Ray is not installed here',
                field="executor.kind",
                line=self._line("kind"),
                fix=f"{INSTALL} (here and on every node of the cluster), or remove [executor] "
                "to run trials on this machine",
            ) from None
        address = self.address
        if address.startswith(CLIENT):
            self._check_client()
        if address != "auto":
            self._probe(address)
        if not ray.is_initialized():  # (one connection per process: `start` made it)
            try:
                self._join()
            except ConnectionError as exc:
                raise self._unreachable(address, str(exc).splitlines()[0]) from None
            except RuntimeError as exc:  # (Ray Client: another Ray or Python there)
                raise self._mismatch(address, str(exc)) from None
        self._check_room(ray.nodes())  # type: ignore[no-untyped-call]
        self._remotes()
        self._head = _host_port(
            address if address != "auto" else ray.get_runtime_context().gcs_address
        )
        self.up.set()

    @property
    def address(self) -> str:
        """The address the lab joins: `[executor] address`, or what RAY_ADDRESS names
        when that is `auto` and it is a Ray Client address (a lab outside the cluster)."""
        named = os.environ.get("RAY_ADDRESS", "").strip()
        if self.config.address == "auto" and named.startswith(CLIENT):
            return named
        return self.config.address

    def _remotes(self) -> None:
        """The task, the reaper and a relay of this connection to the cluster."""
        import ray

        self._task = ray.remote(max_retries=0, retry_exceptions=False)(_experiment)
        self._reaper = ray.remote(max_retries=0, num_cpus=0)(_reap)
        self._warmer = ray.remote(max_retries=0, num_cpus=0)(_warm_up)
        self._warmed = False
        self._relay = (
            ray.remote(_Relay).options(num_cpus=0, resources=HEAD, max_restarts=0).remote()
        )

    def watch(self) -> None:
        """Join the cluster (`connect`), and from now on watch its head (see the module's
        docstring: an outage is ridden out)."""
        self.connect()
        if not self._watching:
            self._watching = True
            threading.Thread(target=self._watch, daemon=True, name="ray-health").start()

    def _join(self) -> None:
        """Join the cluster as a driver; ConnectionError: it cannot be reached. Through
        Ray Client, within JOIN_S, trying again while its server says it could not start
        the driver it runs for the lab on the head: that driver is forked from the server
        while its gRPC threads run, and unless the head was started with
        GRPC_ENABLE_FORK_SUPPORT=false 8 in 120 died before they ran here (Ray issue
        63202); Ray's client then says so after up to ~45 s, and a fresh try starts a new
        one. Once the server answers, Ray's client waits for that driver without a bound
        of its own: JOIN_S is the lab's, so `overnight run` never hangs there silently."""
        import ray

        # (this process's connection only, whatever the environment says: nodes keep theirs)
        os.environ[RECONNECT_ENV] = RECONNECT_S

        def join() -> None:
            ray.init(
                address=self.address,
                namespace="overnight",
                logging_level=logging.ERROR,
                log_to_driver=False,
            )

        if not self.address.startswith(CLIENT):
            join()
            return
        box: dict[str, BaseException] = {}
        deadline = time.monotonic() + JOIN_S

        def joining() -> None:
            failed = 0
            while True:
                try:
                    join()
                    return
                except ConnectionError as exc:
                    # the server answered but the lab's driver died as it started: a
                    # fresh try (a new driver), while there is time
                    if "Initialization failure" not in str(exc):
                        box["error"] = exc
                        return
                    failed += 1
                    if time.monotonic() >= deadline:
                        box["error"] = ConnectionError(
                            "its Ray Client server could not start the lab's driver, "
                            f"{failed} times; start the head with "
                            "GRPC_ENABLE_FORK_SUPPORT=false"
                        )
                        return
                    time.sleep(1)
                except BaseException as exc:  # (said in the caller's thread)
                    box["error"] = exc
                    return

        joiner = threading.Thread(target=joining, daemon=True, name="ray-join")
        joiner.start()
        joiner.join(JOIN_S)
        if joiner.is_alive():
            raise ConnectionError(
                f"its Ray Client server took more than {JOIN_S:g} s to let the lab join"
            )
        if "error" in box:
            raise box["error"]

    def _answers(self) -> bool:
        assert self._head is not None
        try:
            with socket.create_connection(self._head, timeout=CHECK_S):
                return True
        except OSError:
            return False

    def _watch(self) -> None:
        """Probe the head for as long as this process runs: say when the cluster goes
        down, and bring the lab back to it once it answers again."""
        misses = 0
        while True:
            time.sleep(CHECK_S)
            if self.up.is_set():
                misses = 0 if self._answers() else misses + 1
                if misses >= MISSES:
                    self._went_down(f"its head has not answered for {MISSES * CHECK_S:g} s")
            elif self._answers() and self._rejoin():
                misses = 0
                self.up.set()
                self.on_change(
                    "executor.reachable",
                    {"address": self.address,
                     "lasted_s": round(time.time() - self._down_at, 1)},
                )  # fmt: skip

    def _went_down(self, why: str) -> None:
        """The cluster is down (said once per outage): no trial is sent until it is back."""
        with self._outage:
            if not self.up.is_set():
                return
            self.up.clear()
            self._down_at = time.time()
        self.on_change("executor.unreachable", {"address": self.address, "why": why})

    def _rejoin(self) -> bool:
        """Join the cluster afresh once a node can hold a trial; reap what the trials cut
        off by the outage left on its nodes. False: not yet."""
        import ray

        try:
            ray.shutdown()
            self._join()
            nodes = ray.nodes()  # type: ignore[no-untyped-call]
            if not self._has_room(nodes):
                return False
            self._remotes()
            for mark in self._marks:
                self.reap(mark)
        except (ConnectionError, RuntimeError, ray.exceptions.RayError):
            return False
        return True

    def wait_up(self, stop: threading.Event) -> bool:
        """Wait while the cluster is down; False if `stop` came first."""
        self.watch()
        while not self.up.wait(0.1):
            if stop.is_set():
                return False
        return True

    def _warm(self, busy: str) -> None:
        """Once a connection's first experiment runs (on node `busy`: the baseline, most
        often), have each node start the worker processes its next trials will run in:
        Ray starts one when a task finds none idle (about a second, most of it importing
        overnight), which the first trial of every other slot would wait for. As many as
        the node holds trials (at most WARM_MAX, and `parallel` in all, the running one
        counted), by tasks that reserve nothing and are not waited for; Ray keeps the
        processes for the tasks that follow. (Not before that first experiment: it would
        wait behind them for a core.)"""
        import ray
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        if self._warmed:  # (every trial after the first: no lock taken)
            return
        with self._warming:
            if self._warmed:
                return
            self._warmed = True
        nodes = ray.nodes()  # type: ignore[no-untyped-call]
        wanted = self.wanted()
        slots: dict[str, int] = {}
        for node in nodes:
            if node.get("Alive"):
                have = node.get("Resources", {})
                room = [int(have.get(k, 0) // v) for k, v in wanted.items()]
                slots[node["NodeID"]] = min([*room, WARM_MAX]) - (node["NodeID"] == busy)
        left = (self._room_size or sum(slots.values())) - 1
        for turn in range(WARM_MAX):  # (round the nodes, one each a turn)
            for node_id, fits in slots.items():
                if turn < fits and left > 0:
                    left -= 1
                    strategy = NodeAffinitySchedulingStrategy(node_id, soft=False)
                    self._warmer.options(scheduling_strategy=strategy).remote(WARM_S)

    def _freed_node(self) -> str | None:
        """The node where a trial ended most recently and no trial has been sent since."""
        try:
            return self._freed.pop()
        except IndexError:
            return None

    def wanted(self) -> dict[str, float]:
        """What one trial reserves on its node, as Ray names resources."""
        wanted = {"CPU": self.config.num_cpus, **self.config.resources}
        if self.gpus:
            wanted["GPU"] = float(self.gpus)
        return {name: amount for name, amount in wanted.items() if amount}

    def _has_room(self, nodes: list[dict[str, Any]]) -> bool:
        """Whether a live node among `nodes` could hold one trial."""
        wanted = self.wanted()
        return any(
            node.get("Alive")
            and all(node.get("Resources", {}).get(k, 0) >= v for k, v in wanted.items())
            for node in nodes
        )

    def _check_room(self, nodes: list[dict[str, Any]]) -> None:
        """A trial no node could ever hold would wait forever: say so at the start."""
        if self._has_room(nodes):
            return
        wanted = self.wanted()
        asked = ", ".join(f"{k} = {v:g}" for k, v in wanted.items())
        raise ConfigError(
            self.config_path,
            f"no node of the Ray cluster at {self.address} has what one trial reserves ({asked})",
            field="executor",
            line=self._line("kind"),
            fix="start nodes that declare it (`ray start --num-cpus=N --num-gpus=N "
            "--resources='{\"name\": N}'`), or ask for less (num_cpus, resources, "
            "[lab] gpus_per_trial)",
        )

    def _probe(self, address: str) -> None:
        try:
            with socket.create_connection(_host_port(address), timeout=PROBE_S):
                pass
        except OSError as exc:
            raise self._unreachable(address, exc.strerror or str(exc)) from None

    def _line(self, field: str) -> int | None:
        try:
            from overnight.org.load import line_of

            return line_of(self.config_path.read_text(encoding="utf-8"), ("executor", field))
        except OSError:
            return None

    def _unreachable(self, address: str, why: str) -> ConfigError:
        if address.startswith(CLIENT):
            fix = (
                "start the cluster first, its head with a Ray Client server "
                "(`GRPC_ENABLE_FORK_SUPPORT=false ray start --head --port=6379 "
                "--ray-client-server-port=10001` on the head node, "
                "`ray start --address=HEAD:6379` on each worker), open that port on the "
                "head to this machine, and point address at it"
            )
        else:
            fix = (
                "start the cluster first (`ray start --head --port=6379` on the head node, "
                "`ray start --address=HEAD:6379` on each worker) or point address at its head"
            )
        return ConfigError(
            self.config_path,
            f"no Ray cluster answers at {address} ({why})",
            field="executor.address",
            line=self._line("address"),
            fix=fix,
        )

    def _mismatch(self, address: str, why: str) -> ConfigError:
        return ConfigError(
            self.config_path,
            f"the Ray cluster at {address} cannot be joined from here: {why.splitlines()[0]}",
            field="executor.address",
            line=self._line("address"),
            fix="install here the Ray and Python versions the cluster runs (they must "
            "match), or run overnight on the head node",
        )

    def _check_client(self) -> None:
        """Ray Client needs gRPC (`ray[client]`), which plain `ray` does not install."""
        try:
            import grpc  # noqa: F401
        except ImportError:
            raise ConfigError(
                self.config_path,
                f"{self.address} is a Ray Client address, but Ray Client (grpcio, "
                "`ray[client]`) is not installed here",
                field="executor.address",
                line=self._line("address"),
                fix=f"{INSTALL} (it brings ray[client]), or run overnight on the head node "
                'with address = "auto"',
            ) from None

    def measure(
        self,
        experiment: Experiment,
        archive: bytes,
        log_path: Path,
        stop: threading.Event,
        on_start: Callable[[Placed], None],
        hidden: bytes = b"",
    ) -> Outcome:
        """Run `experiment` on the code in `archive` (a tar of the commit) on some node,
        appending its log to `log_path` as it comes; `on_start` hears where it started.
        `hidden` (a tar of the holdout's hidden files, for a holdout run only) is unpacked
        over the checkout there. It goes first to the node where a trial ended last (a
        slot just freed: Ray's lease is asked of that node at once, not through the head),
        elsewhere at once should that node be full by then."""
        import ray
        from ray.exceptions import RayTaskError, TaskCancelledError
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        self.watch()
        self._marks.add(experiment.mark)
        if self._room is not None:
            while not self._room.acquire(timeout=0.1):
                if stop.is_set():
                    return Outcome(None, cancelled=True)
        placed: Placed | None = None
        relay: Any = None
        key = uuid.uuid4().hex  # (the trial's items at the relay)
        try:
            if not self.wait_up(stop):
                return Outcome(None, cancelled=True)
            options: dict[str, Any] = {
                "num_cpus": self.config.num_cpus,
                "name": f"overnight trial {experiment.trial}",
            }
            if self.gpus:
                options["num_gpus"] = self.gpus
            if self.config.resources:
                options["resources"] = dict(self.config.resources)
            near = self._freed_node()
            if near is not None:
                options["scheduling_strategy"] = NodeAffinitySchedulingStrategy(
                    near, soft=True, _spill_on_unavailable=True
                )
            relay = self._relay
            task = self._task.options(**options).remote(
                experiment, archive, hidden, relay, key
            )  # (small arguments travel inside the task; Ray puts big ones in its store)
            redactor = redaction.StreamRedactor()
            log_path.parent.mkdir(parents=True, exist_ok=True)
            done: dict[str, Any] | None = None  # (the task's result, once it ended)
            cancelled = False
            taken = 0  # (items taken from the relay)
            taking: Any = None  # (a long poll of the relay under way)
            with log_path.open("ab") as log:
                try:
                    while done is None or taken < done["pushed"]:
                        if stop.is_set() and not cancelled:
                            ray.cancel(task)
                            cancelled = True
                        if not self.up.is_set():
                            return Outcome(
                                None, placed=placed,
                                unreachable=f"the cluster at {self.address} went unreachable",
                            )  # fmt: skip
                        if taking is None:
                            taking = relay.take.remote(key, TAKE_S)
                        waits = [taking] if done is not None else [taking, task]
                        ready = ray.wait(waits, num_returns=1, timeout=TAKE_S + 1)[0]
                        if not ready:
                            continue  # (a slow relay: look at stop and the cluster again)
                        if taking not in ready:
                            done = ray.get(task)  # (or its error, raised)
                            continue  # (then what it pushed before, should some be on the way)
                        items, taking = ray.get(taking), None
                        taken += len(items)
                        for item in items:
                            if "log" in item:
                                log.write(redactor.feed(item["log"]))
                                log.flush()
                            else:
                                placed = Placed(**item["placed"])
                                on_start(placed)
                                self._warm(busy=placed.node)
                    log.write(redactor.feed(done["log"]))
                finally:
                    log.write(redactor.flush())
            return Outcome(
                _redacted(done["result"]), step=done["step"], protected=done["protected"],
                placed=placed,
            )  # fmt: skip
        except TaskCancelledError:
            return Outcome(None, placed=placed, cancelled=True)
        except RayTaskError:
            raise  # our code failed on the worker: a bug, shown as one
        except (ray.exceptions.RayError, ConnectionError) as exc:
            if stop.is_set():
                return Outcome(None, placed=placed, cancelled=True)
            if isinstance(exc, ConnectionError) or not self.up.is_set() or not self._answers():
                # (the task, or the relay, broke with the head, or Ray Client's connection
                # to it did: nothing else is sent meanwhile)
                self._went_down(f"its head stopped answering ({type(exc).__name__})")
                why = f"the cluster at {self.address} went unreachable"
                return Outcome(None, placed=placed, unreachable=why)
            where = f"node {placed.node[:12]} ({placed.host})" if placed else "its node"
            return Outcome(None, placed=placed, lost=f"{where} was lost: {type(exc).__name__}")
        finally:
            if relay is not None:
                with contextlib.suppress(Exception):
                    relay.drop.remote(key)
            if placed is not None:
                self._freed.append(placed.node)
            if self._room is not None:
                self._room.release()

    def reap(self, mark: str) -> list[dict[str, Any]]:
        """Kill, on every live node, what experiments of the run marked `mark` left running (their
        `overnight run` was killed and Ray ended its tasks, but not the process groups
        they started); returns, per node that had some, what was killed."""
        import ray
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        self.connect()
        refs = {
            node["NodeID"]: self._reaper.options(
                scheduling_strategy=NodeAffinitySchedulingStrategy(node["NodeID"], soft=False)
            ).remote(mark)
            for node in ray.nodes()  # type: ignore[no-untyped-call]
            if node.get("Alive")
        }
        found = []
        for node, ref in refs.items():
            with contextlib.suppress(ray.exceptions.RayError):
                host, killed = ray.get(ref, timeout=60)
                if killed:
                    found.append({"node": node, "host": host, "killed": killed})
        return found


def _host_port(address: str) -> tuple[str, int]:
    host, _, port = address.removeprefix(CLIENT).rpartition(":")
    return host.strip("[]"), int(port)


def _redacted(result: RunResult) -> RunResult:
    return replace(result, tail=redaction.redact(result.tail))


# -- on the worker -------------------------------------------------------------


class _Relay:
    """The relay (a Ray actor on the head): what running trials' tasks push — where each
    started, its log's new bytes, its result — kept per trial until the lab takes it."""

    def __init__(self) -> None:
        self._items: dict[str, list[dict[str, Any]]] = {}
        self._came: dict[str, asyncio.Event] = {}
        """Per trial, what its one long poll under way waits on."""

    async def push(self, key: str, item: dict[str, Any]) -> None:
        self._items.setdefault(key, []).append(item)
        if key in self._came:
            self._came[key].set()

    async def take(self, key: str, wait_s: float) -> list[dict[str, Any]]:
        """The trial's items so far, oldest first; waits up to `wait_s` for one."""
        if not self._items.get(key) and wait_s > 0:
            came = self._came[key] = asyncio.Event()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(came.wait(), wait_s)
            if self._came.get(key) is came:
                del self._came[key]
        return self._items.pop(key, [])

    async def drop(self, key: str) -> None:
        """Forget a trial the lab is done with."""
        self._items.pop(key, None)


def _experiment(
    experiment: Experiment, archive: bytes, hidden: bytes, relay: Any, key: str
) -> dict[str, Any]:
    """The Ray task: unpack the commit (and the hidden files, for a holdout), run the steps,
    push where it runs, the log and the result to `relay` (under `key`), return the result.
    The checkout is deleted when the task ends."""
    import ray

    pushed = 0

    def push(item: dict[str, Any]) -> None:
        """One item to the lab, once the last is there (so they arrive in order)."""
        nonlocal relay, pushed
        if relay is not None:
            try:
                ray.get(relay.push.remote(key, item))
                pushed += 1
            except ray.exceptions.RayError:
                relay = None  # the lab's connection is gone: Ray ends this task with it

    context = ray.get_runtime_context()
    with tempfile.TemporaryDirectory(prefix="overnight-trial-") as tmp:
        checkout = Path(tmp, "checkout")
        _unpack(archive, checkout)
        if hidden:
            _unpack(hidden, checkout)
        log = Path(tmp, "trial.log")
        log.touch()
        env = dict(experiment.env)
        cuda = os.environ.get("CUDA_VISIBLE_DEVICES")
        env.pop("CUDA_VISIBLE_DEVICES", None)
        if cuda is not None:  # the GPUs Ray gave this task, numbered on its node
            env["CUDA_VISIBLE_DEVICES"] = cuda
        stop = threading.Event()
        box: dict[str, Any] = {}

        def steps() -> None:
            try:
                box["done"] = _run_steps(experiment, checkout, log, env, stop)
            except BaseException as exc:
                box["error"] = exc

        runner = threading.Thread(target=steps, daemon=True, name="experiment")
        runner.start()  # (first: the experiment need not wait for the relay to hear of it)
        try:
            push({
                "placed": {
                    "node": context.get_node_id(),
                    "host": socket.gethostname(),
                    "task": context.get_task_id() or "",
                    "pid": os.getpid(),
                    "cuda": cuda,
                }
            })  # fmt: skip
            with log.open("rb") as fh:
                while True:
                    finished = not runner.is_alive()  # before reading: the last bytes count
                    chunk = fh.read(CHUNK)
                    if finished and len(chunk) < CHUNK:
                        break  # (the last bytes go with the result, straight to the lab)
                    if chunk:
                        push({"log": chunk})
                    else:
                        runner.join(POLL_S)
        finally:
            # cancelled (or the caller went away): the watchdog kills the process group
            stop.set()
            runner.join()
        if "error" in box:
            raise box["error"]
        done: dict[str, Any] = box["done"]
        return {**done, "log": chunk, "pushed": pushed}


def _run_steps(
    experiment: Experiment, checkout: Path, log: Path, env: Mapping[str, str], stop: threading.Event
) -> dict[str, Any]:
    wrap = _wrap(experiment, checkout)
    result: RunResult | None = None
    step = "run"
    for name, command in experiment.steps:
        if result is not None:
            if not result.ok or stop.is_set():
                break
            with log.open("a") as fh:
                fh.write(f"\n[overnight: {name}: {command}]\n")
        step = name
        ran = run_budgeted(
            command, cwd=checkout, log_path=log, timeout_s=experiment.timeout_s,
            metric=experiment.metric, env=env, wrap=wrap, max_log=experiment.max_log,
            stop=stop, record=experiment.record,
        )  # fmt: skip
        if ran.timed_out or stop.is_set():
            _kill_trial(experiment.mark, experiment.trial)
        result = ran if result is None else result.followed_by(ran)
    assert result is not None
    return {
        "result": result,
        "step": step,
        "protected": integrity.hash_files(checkout, experiment.protected),
    }


def _wrap(experiment: Experiment, checkout: Path) -> list[str]:
    """The sandbox where bwrap works on this node, else the watchdog that kills the group
    at budget + grace even should this worker die."""
    walls = experiment.walls
    if walls is None or sandbox.bwrap_problem() is not None:
        return sandbox.watchdog(experiment.timeout_s)
    return sandbox.Walls(
        cwd=checkout,
        writable=(checkout, *(Path(p).expanduser() for p in walls["writable"])),
        hidden=tuple(Path(p) for p in walls["hidden"]),
        visible=(Path(sys.prefix), *(Path(p) for p in walls["visible"])),
        network=walls["network"],
    ).argv()


def _unpack(archive: bytes, into: Path) -> None:
    into.mkdir(parents=True, exist_ok=True)
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        tar.extractall(into, filter="data")


def _warm_up(seconds: float) -> None:
    """A task that only holds its worker process a moment (so that the ones sent to a node
    together each start one of their own); importing this module is the point."""
    time.sleep(seconds)


def _kill_trial(mark: str, trial: int) -> None:
    kill_marked(RUN_MARKER, mark, spare=lambda env: env.get(TRIAL_MARKER) != str(trial))


def _reap(mark: str) -> tuple[str, list[int]]:
    """On one node: kill every process group an experiment of the run marked `mark` left
    running."""
    killed = kill_marked(RUN_MARKER, mark, spare=lambda env: TRIAL_MARKER not in env)
    return socket.gethostname(), killed


def archive_of(git_dir: Path, commit: str) -> bytes:
    """The commit's tracked files as a tar (what a worker unpacks)."""
    return subprocess.run(
        ["git", "-C", str(git_dir), "archive", "--format=tar", commit],
        check=True,
        capture_output=True,
    ).stdout


def steps_of(lab: LabConfig) -> tuple[tuple[str, str], ...]:
    """What a trial's experiment runs: `run`, then `evaluate` when the lab has one."""
    return (("run", lab.run), *((("evaluate", lab.evaluate),) if lab.evaluate else ()))
