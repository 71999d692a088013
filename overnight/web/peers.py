"""Who is on the other end of a loopback connection to the command center.

Owns finding the local process that holds the client end of a TCP connection
(Linux: /proc/net/tcp{,6} gives the socket's inode, /proc/PID/fd the process
that holds it) and asking `overnight.governance.approvals.agent_context` whether
that process is an agent's. The web token is the real lock; this is the second
one, for what only a person may do: answer an approval, steer an agent (pause,
resume, restart), type into an agent's terminal (which can answer its CLI's own
permission prompts). An agent that found the token (it is in `.overnight/web.url`,
in the same tree as the agents' worktrees) still cannot approve its own action. Only a positive match refuses: a peer that is not ours
to see (another user's, another machine's, gone already) is let through.

Knows nothing about HTTP frameworks or approvals beyond that one question.
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
from pathlib import Path

from overnight.governance.approvals import agent_context

PROC = Path("/proc")


def _address(field: str) -> tuple[str, int]:
    """`0100007F:1F90` (or 32 hex digits for IPv6) as ('127.0.0.1', 8080)."""
    host, port = field.split(":")
    raw = bytes.fromhex(host)
    # the kernel prints each 32-bit word of the address in host (little-endian) order
    swapped = b"".join(raw[i : i + 4][::-1] for i in range(0, len(raw), 4))
    ip = ipaddress.ip_address(swapped)
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return str(ip), int(port, 16)


def _normal(host: str) -> str:
    ip = ipaddress.ip_address(host)
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return str(ip.ipv4_mapped)
    return str(ip)


def socket_inode(client: tuple[str, int], server: tuple[str, int]) -> int | None:
    """The inode of the local socket whose address is `client` and peer is `server`."""
    try:
        want = ((_normal(client[0]), client[1]), (_normal(server[0]), server[1]))
    except ValueError:
        return None  # not an IP address (a unix socket, a test transport)
    for table in ("tcp", "tcp6"):
        try:
            lines = (PROC / "net" / table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            parts = line.split()
            if len(parts) < 10:
                continue
            try:
                if (_address(parts[1]), _address(parts[2])) == want:
                    return int(parts[9])
            except ValueError:
                continue
    return None


def holder(inode: int) -> int | None:
    """The pid of a process of ours holding socket `inode` (the first one found)."""
    target = f"socket:[{inode}]"
    for entry in PROC.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fds = os.listdir(entry / "fd")
        except OSError:
            continue  # another user's process, or gone
        for fd in fds:
            try:
                if os.readlink(entry / "fd" / fd) == target:
                    return int(entry.name)
            except OSError:
                continue
    return None


def _environ(pid: int) -> dict[str, str]:
    try:
        raw = (PROC / str(pid) / "environ").read_bytes()
    except OSError:
        return {}
    env = {}
    for item in raw.split(b"\0"):
        name, sep, value = item.partition(b"=")
        if sep:
            env[name.decode(errors="replace")] = value.decode(errors="replace")
    return env


def agent_peer(client: tuple[str, int] | None, server: tuple[str, int] | None) -> str | None:
    """Why the process at the other end of this connection is an agent's, or None."""
    if client is None or server is None:
        return None
    inode = socket_inode(client, server)
    if inode is None:
        return None
    pid = holder(inode)
    if pid is None:
        return None
    paths = []
    with contextlib.suppress(OSError):  # gone, or not ours
        paths.append(Path(os.readlink(PROC / str(pid) / "cwd")))
    why = agent_context(paths, env=_environ(pid), pid=pid)
    return None if why is None else f"the request comes from process {pid}: {why}"
