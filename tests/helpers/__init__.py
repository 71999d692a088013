"""What the tests share besides fixtures: lab builders, the CLI and the processes a test
starts, and the harnesses of the gateway, the external agents and the command center.

No tests here, and no test module imports another: a test module takes its helpers from
this package and its fixtures from the conftest.py beside it (or the one above).
"""

from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
"""The checkout: README.md, benchmarks/, build/ (the CLIs `make clis` installs)."""
