"""Wires a started lab to the services that run beside its agents.

Owns what `overnight run` and `overnight up` share besides the agents: today
the LLM gateway (when `overnight.toml` has a `[gateway]` table); the command
center joins here. Knows nothing about how progress is shown.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator

from overnight.agents.external import GATEWAY_URL_FILE
from overnight.agents.supervisor import Services
from overnight.errors import UserError
from overnight.lab.lab import Lab


@contextlib.contextmanager
def lab_services(lab: Lab, announce: Callable[[str], None]) -> Iterator[Services]:
    """Run the lab's services for the length of the block; `announce` gets their addresses."""
    config = lab.config.gateway
    if config is None:
        yield Services()
        return
    from overnight.gateway.service import lab_gateway

    agents = {name: cfg.budget for name, cfg in lab.config.agent_names()}
    with contextlib.ExitStack() as stack:
        try:
            url, keys = stack.enter_context(
                lab_gateway(
                    config, lab.store, lab.config.lab.name, lab.org.root, agents, lab.run.id
                )
            )
        except OSError as exc:
            raise UserError(
                f"{lab.org.config_path}: gateway.port: cannot listen on {config.host}:{config.port}"
                f" ({exc.strerror}).\n  fix: set another [gateway] port (0 for any free one)."
            ) from None
        announce(f"gateway: {url}")
        # External agents read it before every turn: they may outlive this process.
        url_file = lab.state_dir / GATEWAY_URL_FILE
        url_file.write_text(f"{url}\n")
        yield Services(str(url), dict(keys), url.gateway)
