"""What the store holds of a lab's latest run, read through the Store API (as the command
center reads it), never with SQL: its trials, events and agents, empty before a first run.

Reading never creates the store: before `overnight run` has made the lab's database, there
is nothing to read (and the run, not the test, makes it).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeVar

from overnight.records import AgentRecord, Event, Run, Trial
from overnight.store import Store, open_store, store_exists, store_url

T = TypeVar("T")


@contextlib.contextmanager
def lab_store(lab: Path) -> Iterator[Store]:
    """The lab's store, for the block."""
    store = open_store(store_url(lab))
    try:
        yield store
    finally:
        store.close()


def latest_run(lab: Path, name: str = "toy") -> Run | None:
    if not store_exists(store_url(lab)):
        return None
    with lab_store(lab) as store:
        return store.latest_run(name)


def latest_trials(lab: Path, name: str = "toy") -> list[Trial]:
    """The latest run's trials, by number."""
    return _read(lab, name, lambda store, run: store.trials(run.id))


def latest_events(lab: Path, kind: str | None = None, name: str = "toy") -> list[Event]:
    """The latest run's events (those of `kind`, if given), in order."""
    found = _read(lab, name, lambda store, run: store.events(run.id, limit=1_000_000))
    return [e for e in found if kind in (None, e.kind)]


def latest_agents(lab: Path, name: str = "toy") -> list[AgentRecord]:
    """The latest run's agents, by name."""
    found = _read(lab, name, lambda store, run: store.agents(run.id))
    return sorted(found, key=lambda a: a.name)


def _read(lab: Path, name: str, read: Callable[[Store, Run], list[T]]) -> list[T]:
    if not store_exists(store_url(lab)):
        return []
    with lab_store(lab) as store:
        run = store.latest_run(name)
        return [] if run is None else read(store, run)
