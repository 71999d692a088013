"""Cost intelligence: what the night's model calls cost, where it is heading, what is odd.

Owns prices (`prices`), attributing calls to trials (`trials`), the figures per
agent, runtime, route, model and day (`summary`), burn rate and forecast
(`forecast`), anomalies in an agent's own spending (`anomaly`) and the advice drawn
from all of it (`advice`); the part of the config they read, and its saved copy
(`config`). Reads metered attempts through the Store; knows nothing
about HTTP, the CLI or the command center, and enforces nothing (the gateway's
budgets do).
"""
