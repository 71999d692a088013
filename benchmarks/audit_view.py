"""The command center's audit view on a long chain: search, page and verify times.

Seeds a SQLite store with an audit chain of N records (default 100,000) in the
mix a run writes (gateway attempts, trial transitions, decisions, agent states,
a few approvals), then times `overnight.web.audit.search` (what `/audit` and
`/audit/records` do before rendering) for the newest page, common and rare
filters, and a text search that must read the whole chain, each the median of
5 runs; and `AuditView.verify` (the page's verify button). Baseline in the same
run: one `Store.audit_records` read of a page, the cheapest read there is.

The search reads the chain backwards in windows and stops after 1.5 s with a
"search older records" link; the rare filters show how far that goes.

    .venv/bin/python benchmarks/audit_view.py [--records 100000]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from _bench import machine_line

from overnight.governance.audit import Auditor, Entry, load_key, verify
from overnight.store import open_store
from overnight.web.audit import Query, search

AGENTS = [f"agent-{i}" for i in range(20)]


def entry(i: int) -> Entry:
    agent = AGENTS[i % len(AGENTS)]
    trial = i // 10
    correlation = f"run1:{trial}"
    kind = i % 10
    if kind < 4:
        payload = {"route": "lab-model", "upstream": "anthropic", "model": "claude-x",
                   "outcome": "ok", "input_tokens": 1200 + i % 300, "output_tokens": 300,
                   "cost_usd": 0.0123, "latency_s": 1.7}  # fmt: skip
        return Entry("gateway.attempt", agent, "model lab-model", payload, correlation)
    if kind < 7:
        status = ("trial.proposed", "trial.running", "trial.discarded")[kind - 4]
        return Entry(status, agent, f"trial {trial}", {"run": "run1", "detail": {}}, correlation)
    if kind < 9:
        payload = {"action": {"kind": "shell", "command": f"python train.py --seed {i}"},
                   "decision": "allow", "risk": 0.1, "rules": []}  # fmt: skip
        return Entry("decision", agent, f"shell: python train.py --seed {i}", payload, correlation)
    if i % 1000 == 9:
        return Entry("approval.requested", agent, f"approval a{i}", {"detail": {"id": f"a{i}"}})
    return Entry("agent.state", agent, f"agent {agent}", {"detail": {"state": "working"}})


def median_ms(fn: Callable[[], Any], runs: int = 5) -> tuple[float, Any]:
    times, result = [], None
    for _ in range(runs):
        t0 = time.perf_counter()
        result = fn()
        times.append((time.perf_counter() - t0) * 1000)
    return statistics.median(times), result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--records", type=int, default=100_000)
    args = parser.parse_args()
    print(machine_line())
    with tempfile.TemporaryDirectory(prefix="overnight-bench-audit-view-") as tmp:
        key = load_key(Path(tmp) / "keys" / "audit.key", create=True)
        assert key is not None
        store = open_store(f"sqlite:///{Path(tmp) / 'view.db'}")
        auditor = Auditor(store, "bench", key=key)
        t0 = time.perf_counter()
        for i in range(0, args.records, 1000):
            auditor.append_many([entry(j) for j in range(i, min(i + 1000, args.records))])
        auditor.close()
        print(f"seeded {args.records:,} audit records in {time.perf_counter() - t0:.1f} s")

        base, _ = median_ms(lambda: store.audit_records("bench", after=args.records - 50, limit=50))
        print(f"baseline: one store read of the newest 50 records: {base:.1f} ms")
        old_trial = args.records // 10 // 50  # a trial from early in the run
        cases = [
            ("newest page, no filter", Query()),
            ("kind=decision", Query(kind="decision")),
            ("kind=trial (prefix)", Query(kind="trial")),
            ("actor=agent-2, kind=gateway.attempt", Query(kind="gateway.attempt", actor="agent-2")),
            ("kind=approval (1 in 1,000)", Query(kind="approval")),
            (
                f"correlation=run1:{old_trial} (an early trial)",
                Query(correlation=f"run1:{old_trial}"),
            ),
            ("text matching nothing (reads the whole chain)", Query(text="no such words")),
        ]
        print("search, 50 records a page, median of 5 (time budget 1.5 s):")
        for label, query in cases:
            ms, found = median_ms(lambda q=query: search(store, "bench", q))  # type: ignore[misc]
            reach = (
                "reached seq 1"
                if found.next_before is None
                else f"stopped at seq {found.next_before:,}"
                + (" (time budget)" if found.exhausted_budget else " (page full)")
            )
            print(
                f"  {label:<48} {ms:>8.1f} ms  {len(found.records):>3} found, {reach}"
                f"  ({ms / base:,.0f}x baseline)"
            )
        t0 = time.perf_counter()
        verdict = verify(store, "bench", key)
        took = time.perf_counter() - t0
        print(f"verify button ({verdict.summary()}): {took:.2f} s")
        store.close()


if __name__ == "__main__":
    main()
