"""How the terminal shows `overnight.costs.overview`: spend per agent, route and day, the
forecast and each budget's outlook, anomalies, advice. The figures are the costs
package's.

Imports rich and nothing of typer: `quick` shows through here before the app is built.
"""

from __future__ import annotations

import time
from typing import Any

from rich.markup import escape

from overnight.cli.console import out


def _usd(value: float | None) -> str:
    return "-" if value is None else f"${value:,.4f}" if value < 1 else f"${value:,.2f}"


def _when(at: float | None) -> str:
    if at is None:
        return "not at this rate"
    left = at - time.time()
    clock = time.strftime("%H:%M UTC", time.gmtime(at))
    return f"{clock} (in {left / 3600:.1f} h)" if left > 0 else clock


def show(data: dict[str, Any]) -> None:
    total, fc = data["total"], data["forecast"]
    out.print(
        f"[bold]spent {_usd(total['usd'])}[/] · {total['requests']:,} requests · "
        f"{total['tokens']:,} tokens · cache saved {_usd(total['cache_saved_usd'])}"
        + (f" · {total['unpriced']} unpriced attempts" if total["unpriced"] else "")
    )
    line = f"burn {_usd(fc['burn_usd_per_h'])}/h"
    if fc["at_end_usd"] is not None:
        line += f" · by the run's end ({_when(fc['until'])}): {_usd(fc['at_end_usd'])}"
    out.print(line)
    for b in fc["budgets"]:
        out.print(
            f"  budget {escape(b['who'])} {b['period']}: {_usd(b['spent_usd'])} of "
            f"{_usd(b['limit_usd'])}, runs out {_when(b['runs_out_at'])}"
        )
    out.print("[bold]agent[/]  runtime  spent  trials  keeps  $/trial  $/keep  gain/$  cache")
    for a in data["agents"]:
        share = "-" if a["cache_share"] is None else f"{a['cache_share']:.0%}"
        gain = "-" if a["improvement_per_usd"] is None else f"{a['improvement_per_usd']:.4g}"
        out.print(
            f"  {escape(a['name'])}  {a['runtime']}  {_usd(a['usd'])}  {a['trials']}  "
            f"{a['keeps']}  {_usd(a['usd_per_trial'])}  {_usd(a['usd_per_keep'])}  {gain}  "
            f"{share}",
            markup=False,
        )
    for title, key in (("route", "routes"), ("day", "days")):
        for name, s in data[key].items():
            share = "-" if s["cache_share"] is None else f"{s['cache_share']:.0%}"
            per = "-" if s["tokens_per_usd"] is None else f"{s['tokens_per_usd']:,.0f} tok/$"
            out.print(
                f"{title} {name}: {_usd(s['usd'])} · {s['tokens']:,} tokens · {per} · "
                f"cache {share} (saved {_usd(s['cache_saved_usd'])})",
                markup=False,
            )
    for a in data["anomalies"]:
        out.print(f"[red]anomaly[/] {escape(str(a.get('title') or a))}")
    for line in data["advice"]:
        out.print(f"advice: {line}", markup=False)
