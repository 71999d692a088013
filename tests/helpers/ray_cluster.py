"""A real Ray cluster for the tests: a head and two worker nodes on this machine, in a
network namespace of its own where the only interface is loopback, so none of its traffic
leaves 127.0.0.1. Each worker declares one logical GPU and a custom resource `a100`; the
head declares neither, so trials land on the workers only.

The namespace is ready (loopback up) before anything enters it: `unshare` brings `lo` up
itself and says so. (Entering a namespace by pid before `unshare` has made it enters this
machine's instead: that once left the cluster's `lo` down, so its head's GCS listened but
nobody could reach it.) Stopping the cluster kills what runs in its namespace and nothing
else: `ray stop` would take every Ray process on the machine, another cluster's too.
"""

from __future__ import annotations

import contextlib
import os
import random
import shutil
import signal
import subprocess
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from overnight.sessions import wait_until
from tests.helpers.processes import OVERNIGHT, process_gone, start

RAY = str(Path(sys.executable).with_name("ray"))
ROOT = Path(__file__).resolve().parents[2]
"""The checkout whose overnight the cluster's nodes and runs import."""
START_S = 120
"""Most seconds one `ray start` may take (a node comes up in ~5-20 s on a busy machine)."""
TRIES = 3
"""How many times a node is started before the fixture gives up: `ray start` gives a node's
raylet 30 s (fixed in Ray) to register with the GCS, which a machine loaded ~5x over its
cores sometimes exceeds (`The current node timed out during startup`)."""
HEAD_ENV = {"GRPC_ENABLE_FORK_SUPPORT": "false"}
"""What the head starts with, as the README tells a user whose lab joins through `ray://`:
its Ray Client server forks a driver per connection while gRPC threads run, and with
gRPC's fork handlers on (grpcio's default) 8 of 120 such drivers died before they ran
(`Initialization failure from server`; Ray issue 63202), with them off none of 120."""


@dataclass
class Cluster:
    ns: subprocess.Popen[str]
    temp: Path
    env: dict[str, str]
    port: int
    """The head's GCS port. Any is free in a namespace of its own, but `ray start --head`
    refuses a port a GCS anywhere on the machine was started with (it looks at every
    process): each cluster has one of its own, so two suites can run side by side."""
    client_port: int = 0
    """The head's Ray Client server port (`ray://`), one of its own for the same reason."""
    nodes: list[set[int]] = field(default_factory=list)
    """Each node's processes as `ray start` left them, the head's first."""

    def enter(self) -> list[str]:
        return ["nsenter", "-t", str(self.ns.pid), "-n"]

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def client_address(self) -> str:
        """The head's Ray Client address, what a lab on another machine would name."""
        return f"ray://127.0.0.1:{self.client_port}"

    def ray(self, *args: str, timeout: float = START_S, env: dict[str, str] | None = None) -> str:
        """Run `ray ARGS` in the namespace (with `env` added to the cluster's); its output,
        asserting it succeeded. (To a file, not a pipe: the daemons `ray start` leaves
        behind would hold a pipe open.)"""
        out = self.temp.with_suffix(".out")
        with out.open("w") as fh:
            try:
                done = subprocess.run(
                    [*self.enter(), RAY, *args],
                    env={**self.env, **(env or {})}, stdout=fh, stderr=subprocess.STDOUT,
                    timeout=timeout,
                )  # fmt: skip
            except subprocess.TimeoutExpired:
                raise AssertionError(f"ray {args[0]} hung:\n{out.read_text()}") from None
        text = out.read_text()
        assert done.returncode == 0, text
        return text

    def overnight(self, *args: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [*self.enter(), *OVERNIGHT, *args],
            env=self.env, capture_output=True, text=True, timeout=timeout,
        )  # fmt: skip

    def start_head(self) -> None:
        self.nodes[:0] = [self._start_node(
            "--head", f"--port={self.port}", f"--ray-client-server-port={self.client_port}",
            "--num-cpus=1", "--include-dashboard=false",
            "--disable-usage-stats", f"--temp-dir={self.temp}", env=HEAD_ENV,
        )]  # fmt: skip

    def stop_nodes(self) -> None:
        """Kill every node (the worker processes their raylets ran go with them), as a
        cluster taken down would go: a lab's run in the namespace stays."""
        self._kill(set().union(*self.nodes))
        self.nodes = []

    def add_worker(self) -> None:
        self.nodes += [self._start_node(
            f"--address={self.address}", "--num-cpus=1", "--num-gpus=1",
            '--resources={"a100": 1}',
        )]  # fmt: skip

    def _start_node(self, *args: str, env: dict[str, str] | None = None) -> set[int]:
        """`ray start ARGS` (with `env`; TRIES times at most, what a failed start left
        killed before the next); the Ray processes of the node it started."""
        for _ in range(TRIES):
            before = set(self.inside())
            try:
                self.ray(
                    "start", "--node-ip-address=127.0.0.1", "--object-store-memory=100000000",
                    *args, env=env,
                )  # fmt: skip
            except AssertionError as exc:
                failed = exc
                print(f"ray start {args[0]} failed, again: {str(exc)[-300:]}", file=sys.stderr)
                self._kill(set(self.inside()) - before)
                continue
            return {pid for pid in set(self.inside()) - before if _of_ray(pid)}
        raise AssertionError(f"ray start {args[0]} failed {TRIES} times") from failed

    def start(self, *args: str, env: dict[str, str] | None = None) -> subprocess.Popen[str]:
        """`overnight ARGS` in the namespace, in the background (stopped by the caller)."""
        return subprocess.Popen(
            [*self.enter(), *OVERNIGHT, *args], env={**self.env, **(env or {})}, text=True,
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip

    def inside(self) -> list[int]:
        """Every process in the cluster's namespace but the one holding it."""
        mine = os.readlink(f"/proc/{self.ns.pid}/ns/net")
        found = []
        for entry in Path("/proc").iterdir():
            if entry.name.isdigit() and int(entry.name) != self.ns.pid:
                with contextlib.suppress(OSError):
                    if os.readlink(entry / "ns" / "net") == mine:
                        found.append(int(entry.name))
        return found

    def stop(self) -> None:
        """Kill everything running in the namespace: every node, and any run left there."""
        self._kill(set(self.inside()))
        self.nodes = []

    def _kill(self, pids: set[int]) -> None:
        pids = {pid for pid in pids if not process_gone(pid)}
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        wait_until(lambda: all(process_gone(pid) for pid in pids), 30)


def _of_ray(pid: int) -> bool:
    """Whether `pid` is one of Ray's processes (not, say, a lab's, started meanwhile)."""
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False
    # (the head's Ray Client server runs as `python -m ray.util.client.server`)
    return b"/ray/" in argv or argv.startswith(b"ray::") or b"\0ray.util.client." in argv


@contextlib.contextmanager
def running_cluster() -> Iterator[Cluster]:
    """A head and two workers, stopped (with their namespace) when the block ends."""
    ns = start(
        ["unshare", "-n", "sh", "-c", "ip link set lo up && echo up && exec sleep infinity"],
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    temp = Path(f"/tmp/ovr-{uuid.uuid4().hex[:6]}")
    env = {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "RAY_USAGE_STATS_ENABLED": "0",
        # a raylet slow to answer the GCS's health check on a loaded machine is not lost
        # (Ray's 10 s once marked a busy node dead, and its raylet then exited); a killed
        # one refuses at once, so a lost node is still found in seconds
        "RAY_health_check_timeout_ms": "60000",
        "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}",
    }
    port, client_port = random.sample(range(20000, 30000), 2)
    found = Cluster(ns, temp, env, port=port, client_port=client_port)
    try:
        assert ns.stdout is not None
        assert ns.stdout.readline() == "up\n", "unshare could not make a network namespace"
        found.start_head()
        for _ in range(2):
            found.add_worker()
        yield found
    finally:
        if ns.poll() is None:
            found.stop()
        ns.kill()
        ns.communicate()
        shutil.rmtree(temp, ignore_errors=True)
        temp.with_suffix(".out").unlink(missing_ok=True)
