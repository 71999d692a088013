"""The command center: a live web page to watch and steer a run (FastAPI, htmx, SSE, xterm.js).

Owns everything a browser sees: the token and cookie (`auth`), the names it
answers to and the headers that keep other pages from framing it (`shield`), the live picture
of the run kept current from the store's events (`live`, `events`), the pages
and fragments (`render`, `templates/`, `charts`), the agents' terminals in the
browser (`terminals`), the routes, by job (`pages`, `steering`, `stream`,
`approvals`, `audit`, on what they share: `site`), the app that puts them together
(`app`) and the server thread (`server`).
Reads through the Store API and the lab's helpers (`sources`); steers agents
only through the supervisor's `AgentControl`. Core packages never import it.
"""

from overnight.web.app import CommandCenter, missing_assets
from overnight.web.auth import Access
from overnight.web.server import Served, serving
from overnight.web.sources import Sources

__all__ = ["Access", "CommandCenter", "Served", "Sources", "missing_assets", "serving"]
