"""The lab: trials, worktrees, the budgeted runner, metrics, the ratchet, the ledger.

Owns how one attempt becomes a measured, kept or discarded commit, and how a
run resumes after any stop. Pure core: knows nothing about the CLI, the web
page, the daemon, the agents or governance; it asks what it needs of the last
two through small protocols (`judge.Judge`, `preflight.StartChecks`), which
`overnight.wiring` fills.
"""
