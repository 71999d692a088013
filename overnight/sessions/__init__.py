"""Sessions: commands running in terminals that overnight can type into, read, and mirror.

Owns the Session/SessionBackend protocols, the backends' registry (`overnight.plugins`,
hook `register_session_backends`) and the two built-in backends: tmux
(default; sessions outlive the command center, `tmux -L overnight attach -t NAME`
gets you in) and pty (fallback; sessions end with the process that started them).
Knows nothing about agents, trials, the store or the web page.

Streaming: every session appends its raw output to `session.log_path`;
`session.subscribe().read(timeout)` returns the bytes written since the last read
(a file tail), which is what the web terminal feeds to xterm.js and what the
ledger keeps as the agent's transcript.
"""

from overnight.sessions.base import (
    DEFAULT_SIZE,
    LogTail,
    Session,
    SessionBackend,
    SessionError,
    Subscription,
    available,
    create,
    default_backend,
    wait_for,
    wait_until,
)

__all__ = [
    "DEFAULT_SIZE",
    "LogTail",
    "Session",
    "SessionBackend",
    "SessionError",
    "Subscription",
    "available",
    "create",
    "default_backend",
    "wait_for",
    "wait_until",
]
