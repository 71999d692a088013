"""The audit chain's speed: append rate, following the store, verify and export.

On SQLite (and PostgreSQL unless --no-pg), with the signing key in a temporary
directory:

- append rate, one record per transaction (`Auditor.append`, as a decision is
  recorded) and in batches of 100 (`append_many`, as the follower records
  events and gateway attempts); each signs the new head. Baseline in the same
  run: `Store.append_event`, the cheapest write there is, one per transaction.
- follow rate: store events turned into audit records by `Auditor.follow_once`.
- `overnight audit verify` on a chain of 100,000 records: in process and as the
  command (interpreter start included); and `overnight audit export --jsonl`.

Targets (issue 5): ≥ 2,000 records/s appended on SQLite; 100,000 records
verified in ≤ 5 s.

    .venv/bin/python benchmarks/audit.py [--records 100000] [--pg URL] [--no-pg]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _bench import commit_lab, machine_line, pg_schema

from overnight.governance.audit import ENV_KEY, AuditKey, Auditor, Entry, load_key, verify
from overnight.store import Store, open_store, store_url

CONFIG = """\
[lab]
name = "bench"
editable = ["x.py"]
run = "true"
metric = "score"
"""
PG_DEFAULT = "postgresql://127.0.0.1:5432/test"


def rate(n: int, seconds: float) -> str:
    return f"{n / seconds:>10,.0f}/s"


def appends(store: Store, key: AuditKey, label: str, single: int, batched: int) -> None:
    store.create_run("r1", "bench", "base", {}, {})
    t0 = time.perf_counter()
    for i in range(single):
        store.append_event("r1", "bench.event", {"i": i})
    base = time.perf_counter() - t0

    auditor = Auditor(store, f"bench-{label}", key=key)
    payload = {"effect": "allow", "rule": "default", "risk": 0.12, "command": "ls -la"}
    t0 = time.perf_counter()
    for i in range(single):
        auditor.append("decision", "a1", "shell", {**payload, "i": i}, f"r1:{i}")
    one = time.perf_counter() - t0

    t0 = time.perf_counter()
    for i in range(0, batched, 100):
        auditor.append_many([Entry("decision", "a1", "shell", {**payload, "i": i})] * 100)
    batch = time.perf_counter() - t0
    print(
        f"  {label:<10} append, 1 per transaction: {rate(single, one)}"
        f"   ({one / single * 1e6:,.0f} µs each; plain event write {base / single * 1e6:,.0f} µs,"
        f" ratio {one / base:.2f}x)"
    )
    print(f"  {label:<10} append, 100 per transaction: {rate(batched, batch)}")

    events = 10_000 if label == "sqlite" else 3_000
    for i in range(events):
        store.append_event("r1", "trial.running", {"from": "checked"}, agent="a1", trial=i)
    follower = Auditor(store, "bench", key=key)
    t0 = time.perf_counter()
    followed = follower.follow_once()
    took = time.perf_counter() - t0
    print(f"  {label:<10} follow store events into the chain: {rate(followed, took)}")


def verify_and_export(root: Path, key: AuditKey, records: int) -> None:
    store = open_store(store_url(root))
    auditor = Auditor(store, "bench", key=key)
    payload = {"effect": "allow", "rule": "no-force-push", "risk": 0.31, "command": "git status"}
    t0 = time.perf_counter()
    for i in range(0, records, 500):
        auditor.append_many(
            [
                Entry("decision", f"a{j % 4}", "shell", {**payload, "i": i + j}, f"r:{i}")
                for j in range(500)
            ]
        )
    auditor.close()
    build = time.perf_counter() - t0

    t0 = time.perf_counter()
    verdict = verify(store, "bench", key)
    in_process = time.perf_counter() - t0
    store.close()
    assert verdict.ok and verdict.records == records, verdict.summary()

    env = {**os.environ, ENV_KEY: str(key.path)}
    t0 = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-m", "overnight", "audit", "verify", str(root)],
        env=env, capture_output=True, text=True,
    )  # fmt: skip
    command = time.perf_counter() - t0
    assert done.returncode == 0, done.stderr

    t0 = time.perf_counter()
    with open(os.devnull, "w") as sink:
        exported = subprocess.run(
            [sys.executable, "-m", "overnight", "audit", "export", str(root), "--jsonl"],
            env=env, stdout=sink, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
    export = time.perf_counter() - t0
    assert exported.returncode == 0, exported.stderr
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-c", "import overnight.cli"], check=True)
    start = time.perf_counter() - t0

    print(f"  built {records:,} records in batches of 500: {rate(records, build)}")
    print(
        f"  verify {records:,} records in process: {in_process:.2f} s"
        f" ({records / in_process:,.0f} records/s; target ≤ 5 s)"
    )
    print(f"  `overnight audit verify`: {command:.2f} s wall ({done.stdout.strip()})")
    print(f"  `overnight audit export --jsonl` to /dev/null: {export:.2f} s wall")
    print(f"  baseline: interpreter start + import overnight.cli: {start:.2f} s")


def audit_figures(records: int = 100_000, single: int = 5_000, pg: str | None = PG_DEFAULT) -> None:
    """Print every figure of this benchmark (`benchmarks/governance.py` calls it too)."""
    with tempfile.TemporaryDirectory(prefix="overnight-bench-audit-") as tmp:
        key = load_key(Path(tmp) / "keys" / "audit.key", create=True)
        assert key is not None
        print("audit append and follow:")
        store = open_store(f"sqlite:///{Path(tmp) / 'append.db'}")
        appends(store, key, "sqlite", single, 50_000)
        store.close()
        if pg:
            with pg_schema(pg) as url:
                store = open_store(url)
                appends(store, key, "postgresql", single // 5, 10_000)
                store.close()
        print(f"audit verify and export ({records:,} records, SQLite):")
        files = {"overnight.toml": CONFIG, "x.py": "X = 1\n", "program.md": "# bench\n"}
        root = commit_lab(Path(tmp) / "lab", files)
        verify_and_export(root, key, records)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--records", type=int, default=100_000)
    parser.add_argument("--single", type=int, default=5_000, help="one-per-transaction appends")
    parser.add_argument("--pg", default=PG_DEFAULT)
    parser.add_argument("--no-pg", action="store_true")
    args = parser.parse_args()
    print(machine_line())
    audit_figures(args.records, args.single, None if args.no_pg else args.pg)


if __name__ == "__main__":
    main()
