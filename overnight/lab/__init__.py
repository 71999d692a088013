"""The lab: trials, worktrees, the budgeted runner, metrics, the ratchet, the ledger.

Owns how one attempt becomes a measured, kept or discarded commit, and how a
run resumes after any stop. Pure core: knows nothing about the CLI, the web
page or the daemon.
"""
