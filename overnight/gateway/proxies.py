"""Which HTTP proxy, if any, the gateway goes through to reach an upstream.

Owns parsing a proxy URL, reading the usual variables (`HTTPS_PROXY`,
`HTTP_PROXY`, `ALL_PROXY`, `NO_PROXY`, lower case first, as curl and Python's
urllib read them) and the choice per upstream: its own `proxy =` setting wins;
else the variable for its scheme, unless `NO_PROXY` names its host or the host
is loopback (`localhost`, 127.0.0.0/8, ::1: a local model server is never
behind a corporate proxy, as in Go's net/http). Knows nothing about sockets:
`upstream.py` opens the tunnel (CONNECT, for https://) or sends absolute-form
requests (for http://) through the proxy chosen here.
"""

from __future__ import annotations

import ipaddress
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass

from overnight.errors import UserError
from overnight.org.gateway import Proxy, parse_proxy


@dataclass(frozen=True)
class ProxyEnv:
    """The proxy variables of an environment, parsed."""

    http: Proxy | None = None
    https: Proxy | None = None
    no_proxy: tuple[str, ...] = ()

    @classmethod
    def read(cls, environ: Mapping[str, str] | None = None) -> ProxyEnv:
        """From `environ` (default: this process's); a bad URL is a `UserError` naming it."""
        env = os.environ if environ is None else environ
        everything = _variable(env, "all_proxy")
        https = _variable(env, "https_proxy") or everything
        # Not HTTP_PROXY under CGI: a request's `Proxy:` header arrives as it ("httpoxy").
        http = _variable(env, "http_proxy", upper="REQUEST_METHOD" not in env) or everything
        no_proxy = _variable(env, "no_proxy")
        entries = (
            tuple(e.lower() for e in re.split(r"[\s,]+", no_proxy[1]) if e) if no_proxy else ()
        )
        return cls(_parse(http), _parse(https), entries)


def _variable(env: Mapping[str, str], name: str, upper: bool = True) -> tuple[str, str] | None:
    for key in (name, name.upper()) if upper else (name,):
        value = env.get(key, "").strip()
        if value:
            return key, value
    return None


def _parse(found: tuple[str, str] | None) -> Proxy | None:
    if found is None:
        return None
    key, value = found
    try:
        return parse_proxy(value)
    except ValueError as exc:
        raise UserError(
            f"environment variable {key}: {exc}.\n"
            f"  fix: set it to http://host:port, or unset it (`unset {key}`)"
        ) from None


def proxy_for(
    scheme: str, host: str, port: int, setting: str | None, env: ProxyEnv
) -> Proxy | None:
    """The proxy to reach `scheme://host:port` through, or None to connect directly.

    `setting` is the upstream's own `proxy =` (None: unset; "": never a proxy).
    """
    if setting is not None:
        return parse_proxy(setting) if setting else None
    proxy = env.https if scheme == "https" else env.http
    if proxy is None or is_loopback(host) or bypassed(host, port, env.no_proxy):
        return None
    return proxy


def is_loopback(host: str) -> bool:
    name = host.lower().rstrip(".")
    if name == "localhost" or name.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(name.strip("[]")).is_loopback
    except ValueError:
        return False


def bypassed(host: str, port: int, no_proxy: tuple[str, ...]) -> bool:
    """Whether a `NO_PROXY` entry covers `host:port`.

    Entries: `*` (everything); a domain, matching itself and its subdomains
    (a leading `.` or `*.` changes nothing); an IP address or CIDR block; any of
    them with `:port` to match that port only.
    """
    name = host.lower().rstrip(".").strip("[]")
    try:
        address: ipaddress.IPv4Address | ipaddress.IPv6Address | None = ipaddress.ip_address(name)
    except ValueError:
        address = None
    for entry in no_proxy:
        if entry == "*":
            return True
        pattern, want_port = _split_port(entry)
        if want_port is not None and want_port != port:
            continue
        if address is not None:
            try:
                if address in ipaddress.ip_network(pattern, strict=False):
                    return True
            except ValueError:
                pass
            continue
        domain = pattern.removeprefix("*").lstrip(".").rstrip(".")
        if domain and (name == domain or name.endswith("." + domain)):
            return True
    return False


def _split_port(entry: str) -> tuple[str, int | None]:
    """`host:port`, `[v6]:port`, or a bare host / address / CIDR block."""
    if entry.startswith("["):
        inside, _, rest = entry[1:].partition("]")
        return inside, int(rest[1:]) if rest.startswith(":") and rest[1:].isdigit() else None
    if entry.count(":") == 1:
        pattern, _, port = entry.partition(":")
        if port.isdigit():
            return pattern, int(port)
    return entry, None
