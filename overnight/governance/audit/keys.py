"""The key that signs an audit chain's checkpoints, and the signed heads kept beside it.

Owns where the key lives, making and loading it, refusing one inside the lab,
and reading a chain's signed head (written by the `Auditor`). Knows nothing about
the store.

**Checkpoints.** A checkpoint is HMAC-SHA256 over `"<seq>:<hash>"` with a key
kept outside every lab and worktree (`$OVERNIGHT_AUDIT_KEY`, else
`$XDG_CONFIG_HOME/overnight/audit.key`, else `~/.config/overnight/audit.key`,
created mode 600 on first use). Two kinds, both signed:

- the *signed head*: after every append the Auditor signs the new head and
  writes it beside the key (`audit-heads/<chain>.head`), out of reach of
  whoever can write the database. Deleting records from the end is then
  caught by `verify`, since the head says how far the chain went; rewriting
  the chain (editing a record and recomputing every later hash, which needs
  no key) is caught because the head's hash no longer matches.
- database checkpoints, every `auditor.CHECKPOINT_EVERY` records and at a clean
  shutdown, kept in the store: they survive the loss of the head file and
  narrow a rewrite down to the records between two of them.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import json
import os
import re
import secrets
from dataclasses import dataclass
from pathlib import Path

from overnight.errors import UserError

ENV_KEY = "OVERNIGHT_AUDIT_KEY"


def key_path() -> Path:
    """Where the checkpoint key lives (see the module docstring)."""
    explicit = os.environ.get(ENV_KEY)
    if explicit:
        return Path(explicit).expanduser()
    config = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(config) / "overnight" / "audit.key"


@dataclass(frozen=True)
class AuditKey:
    """The secret that signs checkpoints. `id` names it on each checkpoint, safely."""

    path: Path
    secret: bytes

    @property
    def id(self) -> str:
        return hashlib.sha256(b"overnight audit key\0" + self.secret).hexdigest()[:16]

    @property
    def heads(self) -> Path:
        """Where signed heads are kept: beside the key, out of every lab."""
        return self.path.parent / "audit-heads"

    def sign(self, seq: int, hash_: str) -> str:
        return hmac.new(self.secret, f"{seq}:{hash_}".encode(), hashlib.sha256).hexdigest()

    def signed(self, seq: int, hash_: str, mac: str) -> bool:
        return hmac.compare_digest(self.sign(seq, hash_), mac)


def load_key(path: Path | None = None, *, create: bool = False) -> AuditKey | None:
    """The key at `path` (default `key_path()`); made (mode 600) if `create` and missing,
    else None when missing."""
    path = path or key_path()
    if not path.exists():
        if not create:
            return None
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            os.write(fd, (secrets.token_hex(32) + "\n").encode())
        finally:
            os.close(fd)
        try:
            os.link(tmp, path)  # atomic: of two processes creating it at once, one key wins
        except FileExistsError:
            pass
        finally:
            tmp.unlink()
    try:
        secret = bytes.fromhex(path.read_text().strip())
    except (OSError, ValueError) as exc:
        raise UserError(
            f"{path}: not an overnight audit key ({exc}).\n"
            f"  fix: point {ENV_KEY} at the key file the command center made, or move this "
            "file away to make a new key (checkpoints signed with the old one then fail verify)."
        ) from None
    if len(secret) < 16:
        raise UserError(f"{path}: an audit key needs at least 16 bytes (32 hex digits).")
    return AuditKey(path, secret)


def check_key_outside(key: AuditKey, lab_root: Path) -> None:
    """Refuse a key inside the lab: its agents' worktrees live there and could read it."""
    root = lab_root.resolve()
    for what, where in (("key", key.path), ("signed heads", key.heads)):
        if where.resolve().is_relative_to(root):
            raise UserError(
                f"{ENV_KEY}={key.path}: the audit {what} would be inside the lab ({root}), "
                "where agents can read and change it.\n"
                "  fix: keep the key outside the lab, e.g. unset it to use "
                "~/.config/overnight/audit.key."
            )


def chain_name(store_url: str, lab: str) -> str:
    """A file name for the chain of `lab` in the database at `store_url` (password dropped)."""
    url = re.sub(r"://([^:/@]*):[^@/]*@", r"://\1@", store_url)
    return hashlib.sha256(f"{url}\n{lab}".encode()).hexdigest()[:32]


@dataclass(frozen=True)
class SignedHead:
    """The newest signed (seq, hash) of a chain, kept outside the lab."""

    lab: str
    seq: int
    hash: str
    genesis: str
    """The hash of the chain's record 1: the same chain found again after the lab moved."""
    at: float
    key_id: str
    mac: str
    path: Path


SLOT = 4096
"""A head file holds two page-sized slots written in turn, so a write torn by a crash
spoils only the newer one: rewriting in place costs microseconds where write-and-rename
costs a few hundred (on every append)."""


def read_head(path: Path) -> SignedHead | None:
    """The newest head in the file at `path` (its signature unchecked), None if none."""
    try:
        with open(path, "rb") as fh:
            raw = fh.read(2 * SLOT)
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise UserError(f"{path}: unreadable signed audit head ({exc.strerror}).") from None
    return _newest(raw, path)


def _newest(raw: bytes, path: Path) -> SignedHead | None:
    found = read_slots(raw, path)
    return max(found.values(), key=lambda h: h.seq) if found else None


def read_slots(raw: bytes, path: Path) -> dict[int, SignedHead]:
    """The readable heads of a head file's slots, by slot."""
    heads = {}
    for index in (0, 1):
        try:
            data = json.loads(raw[index * SLOT : (index + 1) * SLOT].split(b"\n", 1)[0])
            heads[index] = SignedHead(
                str(data["lab"]), int(data["seq"]), str(data["hash"]), str(data["genesis"]),
                float(data["at"]), str(data["key_id"]), str(data["mac"]), path,
            )  # fmt: skip
        except (ValueError, KeyError, TypeError):
            continue  # empty, or torn by a crash mid-write: the other slot holds the head
    return heads


def find_head(key: AuditKey, store_url: str, lab: str, genesis: str | None) -> SignedHead | None:
    """This chain's signed head: by its name, else (a moved lab) by its first record."""
    head = read_head(key.heads / f"{chain_name(store_url, lab)}.head")
    if head is not None or genesis is None or not key.heads.is_dir():
        return head
    for path in sorted(key.heads.glob("*.head")):
        with contextlib.suppress(UserError):
            other = read_head(path)
            if other is not None and other.genesis == genesis and other.lab == lab:
                return other
    return None
