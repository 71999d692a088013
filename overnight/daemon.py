"""Wires a started lab to the services that run beside its agents.

Owns what `overnight run` and `overnight up` share besides the agents: the LLM
gateway (when `overnight.toml` has a `[gateway]` table), the agents' control
(pause / resume / restart) and the command center (the web page, unless
`--no-ui`). Knows nothing about how progress is shown: every address goes to
`announce`.
"""

from __future__ import annotations

import contextlib
import ipaddress
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from opentelemetry import trace

from overnight.agents.supervisor import AgentControl, Services, session_name
from overnight.errors import UserError
from overnight.lab.desk import TrialDesk
from overnight.lab.lab import Lab
from overnight.proposers import in_terminal
from overnight.wiring import lab_governance


@dataclass(frozen=True)
class UiOptions:
    """Where the command center listens; `enabled=False` is `--no-ui`."""

    host: str = "127.0.0.1"
    port: int = 0
    enabled: bool = True


@contextlib.contextmanager
def lab_services(
    lab: Lab, announce: Callable[[str], None], ui: UiOptions | None = None
) -> Iterator[Services]:
    """Run the lab's services for the length of the block; `announce` gets their addresses."""
    ui = ui or UiOptions()
    control = AgentControl(lab)
    for name, path in control.held().items():
        where = "resume it in the command center" if ui.enabled else f"delete {path} to resume it"
        announce(f"warning: agent {name} is paused (from the command center); {where}")
    with contextlib.ExitStack() as stack:
        from overnight.gateway.service import otlp_tracer_provider

        # with OTEL_EXPORTER_OTLP_ENDPOINT set, one provider exports every span of the run:
        # trial -> proposal -> LLM request (the gateway's) -> attempt, and each decision
        provider = otlp_tracer_provider()
        if provider is not None:
            trace.set_tracer_provider(provider)
            stack.callback(provider.shutdown)

        # governance first: the gateway and the agents are judged by it from the start
        governor = stack.enter_context(lab_governance(lab))
        services = Services(control=control, governor=governor)
        config = lab.config.gateway
        if config is not None:
            from overnight.gateway.service import lab_gateway

            agents = {name: cfg.budget for name, cfg in lab.config.agent_names()}
            try:
                url, keys = stack.enter_context(
                    lab_gateway(
                        config,
                        lab.store,
                        lab.config.lab.name,
                        lab.org.root,
                        agents,
                        lab.run.id,
                        governor=governor,
                        tracer_provider=provider,
                    )
                )
            except OSError as exc:
                raise UserError(
                    f"{lab.org.config_path}: gateway.port: cannot listen on "
                    f"{config.host}:{config.port} ({exc.strerror}).\n"
                    "  fix: set another [gateway] port (0 for any free one)."
                ) from None
            announce(f"gateway: {url}")
            # agents' `overnight try` hand their trials to the desk, which runs them here;
            # it stops them (recorded `interrupted`) before the gateway goes
            desk = TrialDesk(lab)
            url.gateway.desk = desk
            stack.callback(desk.close)
            # External agents read it before every turn: they may outlive this process.
            url_file = lab.paths.gateway_url
            url_file.write_text(f"{url}\n")
            services = Services(str(url), dict(keys), url.gateway, control, governor)
        if ui.enabled:
            stack.enter_context(command_center(lab, services, ui, announce))
        yield services


@contextlib.contextmanager
def command_center(
    lab: Lab, services: Services, ui: UiOptions, announce: Callable[[str], None]
) -> Iterator[Any]:
    """Serve the command center for the block; announces its ready-to-click URL."""
    from overnight.sessions import default_backend
    from overnight.sessions.tmux import TmuxBackend
    from overnight.web import Access, CommandCenter, Sources, missing_assets, serving

    backend = default_backend()
    tmux = backend if isinstance(backend, TmuxBackend) else None
    terminals = {
        a.name: session_name(lab.org.root, lab.run.id, a.name)
        for a in lab.agents()
        if in_terminal(a.runtime)
    }
    sources = Sources(
        store=lab.store,
        run=lab.run,
        config=lab.config,
        root=lab.org.root,
        state_dir=lab.state_dir,
        gateway_url=services.gateway_url,
        control=services.control,
        terminals=terminals,
        tmux=tmux,
        governor=services.governor,
    )
    center = CommandCenter(sources, Access.for_lab(lab.org.root))
    with contextlib.ExitStack() as stack:
        try:
            running = stack.enter_context(serving(center, ui.host, ui.port))
        except OSError as exc:
            raise UserError(
                f"--port: the command center cannot listen on {ui.host}:{ui.port}"
                f" ({exc.strerror}).\n"
                "  fix: pick another --port (0 for any free one), or --no-ui to run without it."
            ) from None
        if not _loopback(ui.host):
            announce(
                f"warning: the command center listens on {ui.host}: anyone who can reach it and "
                "has the URL can steer your agents"
            )
        missing = missing_assets()
        if missing:
            announce(
                f"warning: the command center's front-end files are missing ({', '.join(missing)});"
                " run `make web-assets` for the terminal and live controls"
            )
        announce(f"command center: {running.url}")
        yield running


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
