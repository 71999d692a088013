"""A real Ray cluster for the tests: a head and two worker nodes on this machine, in a
network namespace of its own where the only interface is loopback, so none of its traffic
leaves 127.0.0.1. Each worker declares one logical GPU and a custom resource `a100`; the
head declares neither, so trials land on the workers only.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from tests.helpers.processes import OVERNIGHT

RAY = str(Path(sys.executable).with_name("ray"))
PORT = 6380
ROOT = Path(__file__).resolve().parents[2]
"""The checkout whose overnight the cluster's nodes and runs import."""


@dataclass
class Cluster:
    ns: subprocess.Popen[bytes]
    temp: Path
    env: dict[str, str]

    def enter(self) -> list[str]:
        return ["nsenter", "-t", str(self.ns.pid), "-n"]

    def ray(self, *args: str, timeout: float = 180) -> str:
        """Run `ray ARGS` in the namespace; its output, asserting it succeeded. (To a file,
        not a pipe: the daemons `ray start` leaves behind would hold a pipe open.)"""
        out = self.temp.with_suffix(".out")
        with out.open("w") as fh:
            try:
                done = subprocess.run(
                    [*self.enter(), RAY, *args],
                    env=self.env, stdout=fh, stderr=subprocess.STDOUT, timeout=timeout,
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

    def add_worker(self) -> None:
        self.ray(
            "start", f"--address=127.0.0.1:{PORT}", "--node-ip-address=127.0.0.1",
            "--num-cpus=1", "--num-gpus=1", '--resources={"a100": 1}',
            "--object-store-memory=100000000",
        )  # fmt: skip

    def start(self, *args: str) -> subprocess.Popen[str]:
        """`overnight ARGS` in the namespace, in the background (stopped by the caller)."""
        return subprocess.Popen(
            [*self.enter(), *OVERNIGHT, *args], env=self.env, text=True,
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip

    def stop(self) -> None:
        subprocess.run(
            [*self.enter(), RAY, "stop", "--force"], env=self.env, capture_output=True, timeout=120
        )


@contextlib.contextmanager
def running_cluster() -> Iterator[Cluster]:
    """A head and two workers, stopped (with their namespace) when the block ends."""
    ns = subprocess.Popen(["unshare", "-n", "sleep", "infinity"])
    temp = Path(f"/tmp/ovr-{uuid.uuid4().hex[:6]}")
    env = {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "RAY_USAGE_STATS_ENABLED": "0",
        "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}",
    }
    found = Cluster(ns, temp, env)
    try:
        subprocess.run([*found.enter(), "ip", "link", "set", "lo", "up"], check=True)
        # On this busy machine the head's GCS now and then never comes up (its log stays
        # empty and `ray start` waits for it forever): give it a minute, then start over.
        for attempt in range(3):
            try:
                found.ray(
                    "start", "--head", "--node-ip-address=127.0.0.1", f"--port={PORT}",
                    "--num-cpus=1", "--include-dashboard=false", "--disable-usage-stats",
                    f"--temp-dir={temp}", "--object-store-memory=100000000", timeout=60,
                )  # fmt: skip
                break
            except AssertionError:
                found.stop()
                if attempt == 2:
                    raise
        for _ in range(2):
            found.add_worker()
        yield found
    finally:
        found.stop()
        ns.kill()
        ns.wait()
        shutil.rmtree(temp, ignore_errors=True)
        temp.with_suffix(".out").unlink(missing_ok=True)
