"""Wiring: where the core packages that must not know each other meet.

The lab does not import the agents, the runtimes' registry or governance, and
governance does not import the lab; the commands that run a lab (`overnight run`,
`up`, `import`) join them here, above them all:

- `Checks`: what a lab's start asks of the runtimes registered and of the lab's
  policy (`overnight.lab.preflight.StartChecks`), for `Lab.start`;
- `lab_governance`: the governance of a started lab for the length of a block,
  judging its trials.

Knows nothing about the CLI, the web page or how progress is shown.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Iterator, Mapping

from overnight.governance.approvals import Approvals
from overnight.governance.audit import Auditor
from overnight.governance.governor import Governor
from overnight.governance.policy import Policy
from overnight.lab.lab import Lab
from overnight.org import Org
from overnight.proposers import Runtime
from overnight.proposers.runtime import RUNTIMES

log = logging.getLogger("overnight.governance")


class Checks:
    """The runtimes registered (built-in and plugins'), and the lab's policy:
    `overnight.lab.preflight.StartChecks` for a lab started on this machine."""

    def runtimes(self) -> Mapping[str, Runtime]:
        return {r.name: r for r in RUNTIMES}

    def policy_warnings(self, org: Org) -> list[str]:
        failing = [o for o in Policy.load(org.root, org.config.governance).run_tests() if o.problem]
        if not failing:
            return []
        return [
            f"{len(failing)} policy test(s) fail, e.g. {failing[0].describe()}; "
            f"see `overnight policy test {org.root}`"
        ]


@contextlib.contextmanager
def lab_governance(lab: Lab, sweep_every: float = 5.0) -> Iterator[Governor]:
    """The governance of a started lab for the length of the block: its policy loaded,
    the audit chain followed (trial transitions, agent states, approvals, gateway
    attempts), lapsed approvals swept, and the lab's trials judged."""
    config = lab.config
    policy = Policy.load(lab.org.root, config.governance)
    auditor = Auditor(lab.store, config.lab.name, lab_root=lab.org.root)
    approvals = Approvals.for_lab(lab.store, config, auditor=auditor)
    governor = Governor(
        policy,
        lab.store,
        lab.run.id,
        auditor,
        approvals,
        autonomy={name: str(agent.autonomy) for name, agent in config.agent_names()},
        protected=config.lab.protected,
    )
    auditor.start()
    auditor.append(
        "policy.loaded",
        "overnight",
        f"policy {policy.version[:12]}",
        {"version": policy.version, "sources": list(policy.sources)},
        lab.run.id,
    )
    stop = threading.Event()

    def sweep() -> None:
        while not stop.wait(sweep_every):
            try:
                approvals.sweep()
            except Exception:
                log.exception("could not sweep lapsed approvals")

    sweeper = threading.Thread(target=sweep, name="overnight-approvals", daemon=True)
    sweeper.start()
    lab.judge = governor
    try:
        yield governor
    finally:
        lab.judge = None
        stop.set()
        sweeper.join()
        governor.close()
        approvals.close()
        auditor.close()
