"""Plugins: where runtimes, session backends and wire protocols come from.

Owns the one plugin registry. A plugin is a module (or any object) that defines
one or more of the hooks in `BUILTINS`; each hook is called once, with a
`register` function, the first time overnight needs that kind of extension:

    register_runtimes(register)          register(runtime)   what `runtime = "..."` names:
                                         a proposer on a thread, or a CLI in a terminal
    register_session_backends(register)  register(backend class)
    register_protocols(register)         register(wire protocol)

Installed packages bring plugins through the `overnight` entry-point group; the
built-ins are the modules `BUILTINS` names and take exactly the same path, only
found by name instead of by package metadata (simonw/llm's design). A kind's
registry is filled once, under a lock, so no thread ever sees it half filled.
A third-party plugin that does not load, fails in its hook or takes a name
already taken is a `PluginError` naming the plugin, its package and the fix.

Knows no runtime, backend or protocol: it imports nothing of overnight but its
errors and names the built-ins as strings, so each package owns the typed
registry of its own kind (`Registry`) without a cycle between layers.
"""

from __future__ import annotations

import importlib
import os
import threading
import traceback
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from importlib import metadata
from typing import Any, Generic, Protocol, TypeVar

from overnight.errors import PluginError

GROUP = "overnight"
"""The entry-point group an installed package names its plugin in."""

BUILTINS: dict[str, tuple[str, ...]] = {
    "register_runtimes": (
        "overnight.proposers.optuna",
        "overnight.proposers.llm",
        "overnight.agents.runtimes",
    ),
    "register_session_backends": ("overnight.sessions.tmux", "overnight.sessions.pty"),
    "register_protocols": (
        "overnight.gateway.protocols.anthropic",
        "overnight.gateway.protocols.chat",
        "overnight.gateway.protocols.responses",
    ),
}
"""Every hook, and the built-in modules that implement it, in the order they register
(the first session backend that runs on this machine is the default)."""


class Named(Protocol):
    @property
    def name(self) -> str: ...


T = TypeVar("T", bound=Named)

_lock = threading.RLock()  # re-entrant: a hook may ask another kind's registry


@dataclass(frozen=True)
class Plugin:
    """One loaded plugin: what its hooks are found on, and who to blame for it."""

    name: str
    hooks: Any
    package: str | None = None
    """The installed package (name and version) that brought it; None for a built-in."""
    entry_point: str = ""

    def describe(self) -> str:
        if self.package is None:
            return f"built-in plugin {self.name}"
        return (
            f"plugin {self.name!r} (entry point `{self.entry_point}` in the {GROUP!r} group "
            f"of package {self.package})"
        )

    def fix(self) -> str:
        if self.package is None:
            return "this is overnight's own bug; please report it"
        dist = self.package.split()[0]
        return (
            f"upgrade or reinstall the package (`pip install -U {dist}`), or uninstall it "
            f"(`pip uninstall {dist}`)"
        )


class Registry(Generic[T]):
    """One kind of extension, by name: what every plugin's `hook` registers, the built-ins
    first. Filled on first use; thread-safe; read-only afterwards.

    `same(a, b)` says two extensions cannot both be registered (default: one name)."""

    def __init__(self, hook: str, *, same: Callable[[T, T], bool] | None = None) -> None:
        if hook not in BUILTINS:
            raise ValueError(f"{hook!r} is not a hook of overnight's plugins: {list(BUILTINS)}")
        self.hook = hook
        self._same = same or (lambda a, b: a.name == b.name)
        self._items: dict[str, T] = {}
        self._loaded = False

    def get(self, name: str) -> T | None:
        return self._table().get(name)

    def names(self) -> list[str]:
        return sorted(self._table())

    def __iter__(self) -> Iterator[T]:
        """Every extension, in the order registered."""
        return iter(self._table().values())  # never changes once filled

    def _table(self) -> dict[str, T]:
        if not self._loaded:
            with _lock:
                if not self._loaded:
                    self._items = self._load()
                    self._loaded = True
        return self._items

    def _load(self) -> dict[str, T]:
        items: dict[str, T] = {}
        owners: dict[str, Plugin] = {}
        builtins = [_builtin(module) for module in BUILTINS[self.hook]]
        for plugin in [*builtins, *third_party()]:
            hook = getattr(plugin.hooks, self.hook, None)
            if hook is None:
                continue

            def register(item: T, plugin: Plugin = plugin) -> None:
                taken = next((k for k in items.values() if self._same(item, k)), None)
                if taken is not None:
                    owner = owners[taken.name]
                    clash = (
                        "a name taken by"
                        if taken.name == item.name
                        else f"which clashes with {taken.name!r} of"
                    )
                    raise PluginError(
                        f"{plugin.describe()} registers {item.name!r}, {clash} "
                        f"{owner.describe()}.\n  fix: {(plugin if plugin.package else owner).fix()}"
                    )
                items[item.name] = item
                owners[item.name] = plugin

            if plugin.package is None:
                hook(register)  # a built-in's failure is our bug: it raises as it is
                continue
            try:
                hook(register)
            except PluginError:
                raise
            except Exception as exc:
                raise PluginError(
                    f"{plugin.describe()} failed in {self.hook}(): {_said(exc)}\n"
                    f"  fix: {plugin.fix()}"
                ) from None
        return items


def _builtin(module: str) -> Plugin:
    return Plugin(module, importlib.import_module(module))


_found: list[Plugin] | PluginError | None = None


def third_party() -> list[Plugin]:
    """The plugins of installed packages, each imported once (a failure is remembered:
    every later use says so again)."""
    global _found
    with _lock:
        if _found is None:
            try:
                _found = [_load(ep) for ep in metadata.entry_points(group=GROUP)]
            except PluginError as exc:
                _found = exc
        if isinstance(_found, PluginError):
            raise PluginError(str(_found))
        return _found


def _load(ep: metadata.EntryPoint) -> Plugin:
    dist = ep.dist  # None only for an entry point made by hand, not found installed
    package = f"{dist.name} {dist.version}" if dist is not None else ep.module.split(".")[0]
    plugin = Plugin(ep.name, None, package, f"{ep.name} = {ep.value}")
    try:
        hooks = ep.load()
    except Exception as exc:
        raise PluginError(
            f"{plugin.describe()} does not load: {_said(exc)}\n  fix: {plugin.fix()}"
        ) from None
    if not any(callable(getattr(hooks, hook, None)) for hook in BUILTINS):
        raise PluginError(
            f"{plugin.describe()} defines none of overnight's hooks ({', '.join(BUILTINS)}).\n"
            f"  fix: {plugin.fix()}; if you wrote it, name its hook function after one of them"
        )
    return Plugin(ep.name, hooks, package, plugin.entry_point)


def _said(exc: BaseException) -> str:
    """An exception as one line, with where in the plugin's own code it was raised (for
    its author; not the import machinery's frames, nor ours)."""
    ours = (os.path.dirname(importlib.__file__), __file__)
    frames = [
        f for f in traceback.extract_tb(exc.__traceback__)
        if not f.filename.startswith("<") and not f.filename.startswith(ours)
    ]  # fmt: skip
    where = f" (at {frames[-1].filename}:{frames[-1].lineno})" if frames else ""
    return f"{type(exc).__name__}: {exc}{where}"
