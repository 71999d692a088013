"""`overnight gateway` and `overnight fake-provider`: the LLM gateway served alone, and a
fake provider on loopback to point it (or an agent) at.

Owns the gateway's address lines, its stop on SIGTERM or Ctrl-C, and the message
for a port it cannot listen on. The serving is `gateway.service`'s and
`testing.fake_provider`'s.
"""

from __future__ import annotations

import signal
import sys
import threading
from pathlib import Path
from typing import Annotated

import typer

from overnight.cli.common import Dir, out
from overnight.errors import UserError
from overnight.lab.privacy import keep_private

commands = typer.Typer()


@commands.command()
def gateway(
    directory: Dir = Path("."),
    config_file: Annotated[
        Path | None,
        typer.Option("--config", help="Read [gateway] from this file instead of overnight.toml."),
    ] = None,
    port: Annotated[int | None, typer.Option(help="Port (0 picks a free one).")] = None,
    host: Annotated[str | None, typer.Option(help="Address to bind (default 127.0.0.1).")] = None,
) -> None:
    """Serve the lab's LLM gateway alone: failover, translation, metering, budgets."""
    from overnight.gateway.config import load_gateway_config
    from overnight.gateway.server import quiet_gc
    from overnight.gateway.service import lab_gateway
    from overnight.org import load_org
    from overnight.store import open_store, store_url

    keep_private()
    org = load_org(directory)
    if config_file is not None:
        gw_config = load_gateway_config(config_file.resolve())
    elif org.config.gateway is not None:
        gw_config = org.config.gateway
    else:
        raise UserError(
            f"{org.config_path}: no [gateway] table.\n"
            "  fix: add [[gateway.upstreams]] and [gateway.models] (see README, Gateway), "
            "or pass --config FILE."
        )
    agents = {name: cfg.budget for name, cfg in org.config.agent_names()}
    store = open_store(store_url(org.root))
    run = store.latest_run(org.config.lab.name)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    try:
        with lab_gateway(
            gw_config, store, org.config.lab.name, org.root, agents,
            run.id if run else None, host=host, port=port,
        ) as (url, keys):  # fmt: skip
            quiet_gc()
            out.print(f"gateway: {url}", soft_wrap=True)
            out.print(f"virtual keys: {keys[next(iter(keys))].parent}/<agent>", soft_wrap=True)
            out.print(
                f"point agents at it: ANTHROPIC_BASE_URL={url} OPENAI_BASE_URL={url}/v1",
                soft_wrap=True,
            )
            sys.stdout.flush()
            stop.wait()
    except OSError as exc:
        raise UserError(
            f"cannot listen on {host or gw_config.host}:{gw_config.port if port is None else port}"
            f" ({exc.strerror}).\n  fix: pick another --port (0 for any free one)."
        ) from None
    finally:
        store.close()
    out.print("gateway stopped")


@commands.command("fake-provider")
def fake_provider(
    protocol: Annotated[
        str, typer.Option(help="anthropic or openai (chat completions + responses).")
    ] = "anthropic",
    port: Annotated[int, typer.Option(help="Port on 127.0.0.1 (0 picks a free one).")] = 0,
    script: Annotated[Path | None, typer.Option(help="JSON list of scripted replies.")] = None,
    mode: Annotated[
        str, typer.Option(help="queue (replies in order) or conversation (by tool results so far).")
    ] = "queue",
    tls_cert: Annotated[
        Path | None,
        typer.Option(help="Serve https with this certificate (PEM; with --tls-key)."),
    ] = None,
    tls_key: Annotated[
        Path | None, typer.Option(help="The certificate's private key (PEM).")
    ] = None,
) -> None:
    """A fake LLM provider on loopback that speaks the real wire format and injects faults."""
    from overnight.testing.fake_provider import serve

    serve(protocol, port, script, mode, tls_cert=tls_cert, tls_key=tls_key)
