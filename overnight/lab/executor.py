"""Where trials run: the local executor's slots, and GPUs handed out per slot.

Owns how many trials may run at once (`parallel`) and which devices each gets
(`CUDA_VISIBLE_DEVICES`). Knows nothing about trials or the store.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import subprocess
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


def visible_gpus() -> list[str]:
    """GPU ids this process may use: `CUDA_VISIBLE_DEVICES` if set, else what nvidia-smi lists."""
    env = os.environ.get("CUDA_VISIBLE_DEVICES")
    if env is not None:
        return [g for g in (x.strip() for x in env.split(",")) if g and g != "-1"]
    if shutil.which("nvidia-smi") is None:
        return []
    proc = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True)
    if proc.returncode != 0:
        return []
    return [str(i) for i, line in enumerate(proc.stdout.splitlines()) if line.startswith("GPU ")]


class LocalExecutor:
    """`parallel` slots on this machine; with `gpus_per_trial`, each slot owns its GPUs.

    A slot is an flock(2) on a file in `lock_dir`, so the limit holds across
    processes: the agents' threads of `overnight run` and every `overnight try`
    of an external agent share it, and a slot held by a killed process frees
    itself.
    """

    def __init__(
        self,
        parallel: int,
        lock_dir: Path,
        gpus_per_trial: int = 0,
        gpus: list[str] | None = None,
    ) -> None:
        self._envs: list[dict[str, str]] = []
        if gpus_per_trial:
            gpus = visible_gpus() if gpus is None else gpus
            groups = [gpus[i : i + gpus_per_trial] for i in range(0, len(gpus), gpus_per_trial)]
            groups = [g for g in groups if len(g) == gpus_per_trial][:parallel]
            self._envs = [{"CUDA_VISIBLE_DEVICES": ",".join(group)} for group in groups]
        else:
            self._envs = [{} for _ in range(parallel)]
        self.size = len(self._envs)
        self.lock_dir = lock_dir
        # Threads of this process take turns here first, so they do not spin on flock.
        self._local = threading.BoundedSemaphore(self.size)

    @contextmanager
    def slot(self, stop: threading.Event | None = None) -> Iterator[dict[str, str] | None]:
        """Wait for a free slot and yield the environment the trial runs with.

        Yields None instead if `stop` is set while waiting.
        """
        while not self._local.acquire(timeout=_POLL_S):
            if stop is not None and stop.is_set():
                yield None
                return
        try:
            self.lock_dir.mkdir(parents=True, exist_ok=True)
            while True:
                for index, env in enumerate(self._envs):
                    fd = os.open(self.lock_dir / f"slot-{index}", os.O_RDWR | os.O_CREAT, 0o644)
                    try:
                        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    except BlockingIOError:
                        os.close(fd)
                        continue
                    try:
                        yield env
                    finally:
                        os.close(fd)  # releases the flock
                    return
                # every slot is held by another process: poll (flock cannot wait on "any")
                if stop is not None and stop.wait(_POLL_S):
                    yield None
                    return
                if stop is None:
                    time.sleep(_POLL_S)
        finally:
            self._local.release()


_POLL_S = 0.1
