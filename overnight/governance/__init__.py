"""Governance: every action an agent takes is checked against policy before it happens.

Owns the action model (`action`: one schema for a tool call from a Claude Code
hook, a shell command, a file edit, an LLM request at the gateway and a keep),
policies as code (`policy`: YAML files of CEL rules, weighted risk signals and
their own tests, versioned by content hash, failing closed), risk scores and
autonomy levels (`risk`), the decision record (`decision`), the CEL dialect
policies are written in (`expressions`), approvals and the hash-chained audit.

Knows nothing about the CLI, the web page, the daemon, the lab or how an agent
runs (`overnight.wiring` hands a lab its governance): the command center builds an `Action`, asks `Policy.decide`, and acts on the
`Decision`. Importing this package is deliberately free: the Claude Code hook
starts a fresh interpreter on every tool call, so nothing heavy (CEL, YAML,
pydantic) is imported until a module that needs it is.
"""
