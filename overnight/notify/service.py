"""The notifier of a running lab, and the test message of `overnight notify test`.

Owns `Notifier`: one thread that follows the run's events in the store (from the
cursor the store keeps for the lab, so a restart neither repeats nor skips),
has the `Watch` read them, turns each happening into a notice for every sink
that hears of it (and each agent's silence into `stuck`, per sink's
`stuck_after`), stores the notices with the cursor's move in one transaction,
and wakes the sinks' couriers. Writes the morning report when the run stops and
a sink hears of it. Also `sinks_of` (the configured sinks, secrets read) and
`test` (one message to every sink, each answer returned). Knows nothing about
the CLI or the web page.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from overnight.errors import ConfigError
from overnight.lab.lab import Lab
from overnight.notify.base import SINKS, DeliveryError, Item, Message, Sink, read_secret
from overnight.notify.browser import EVENT, BrowserSink
from overnight.notify.courier import Courier
from overnight.notify.watch import Happening, Watch, span
from overnight.org.config import OrgConfig
from overnight.org.notify import named_sinks
from overnight.paths import StateDir
from overnight.records import Notice, Run
from overnight.store import Store

log = logging.getLogger("overnight.notify")

CLOSE_S = 15.0
"""How long a stopping run waits for its last notifications (one try each)."""
FAILING_CLOSE_S = 2.0
"""... and for a sink whose last try failed: what it could not take stays queued for the
next start, rather than holding up the end of the run."""
CURSOR_EVERY_S = 10.0
"""Without notices, the cursor is written at most this often (one write, not one a poll)."""
PAGE = 5000


def sinks_of(config: OrgConfig, config_file: Path | str) -> list[Sink]:
    """Every configured sink, its secrets read (a ConfigError naming the field if one
    cannot be)."""
    out = []
    for name, cfg in named_sinks(config.notify, config.governance.webhook):
        secrets = {}
        for what in ("url", "token", "password"):
            if hasattr(cfg, f"{what}_env"):
                secret = read_secret(cfg, what, name, config_file)
                if secret is not None:
                    secrets[what] = secret
        if cfg.ca_file is not None and not Path(cfg.ca_file).expanduser().is_file():
            raise ConfigError(
                config_file,
                f"ca_file {cfg.ca_file!r} of sink {name!r} is not a file",
                field=f"notify[{name}].ca_file",
                fix="give the PEM file of the CA that signed the SMTP server's certificate",
            )
        out.append(SINKS[cfg.kind](name, cfg, secrets))
    return out


def _post(store: Store, run_id: str, payload: Mapping[str, Any]) -> None:
    store.append_event(run_id, EVENT, payload)


def web_base(state: StateDir) -> Callable[[], str | None]:
    """The command center's address without its token, read when a link is made (None
    while it does not run)."""

    def read() -> str | None:
        try:
            url = state.web_url.read_text(encoding="utf-8").strip()
        except OSError:
            return None
        return url.split("/?", 1)[0] or None

    return read


class Notifier:
    """Follows a run's events and hands notices to its sinks' couriers. Thread-safe."""

    POLL_S = 0.25

    def __init__(
        self,
        store: Store,
        run: Run,
        config: OrgConfig,
        sinks: list[Sink],
        *,
        base_url: Callable[[], str | None] = lambda: None,
        report: Callable[[], Path | None] | None = None,
    ) -> None:
        self.store = store
        self.run = run
        self.lab = config.lab.name
        self.sinks = sinks
        self.report = report
        self.watch = Watch(store, run, config)
        for sink in sinks:
            if isinstance(sink, BrowserSink):
                sink.post = functools.partial(_post, store)
        self.couriers = {s.name: Courier(store, self.lab, s, base_url) for s in sinks}
        self._told: dict[tuple[str, str], float] = {}
        """(agent, sink) -> the silence (its start) the sink was told of."""
        self._lock = threading.Lock()
        self._closing = threading.Event()
        self._thread = threading.Thread(target=self._main, name="overnight-notify", daemon=True)
        stored = store.notify_position(self.lab)
        self._stored = stored or 0
        self.position = stored if stored is not None else self._head()
        self._stored_at = time.monotonic()

    def _head(self) -> int:
        """The newest event id of the run: a lab's first notifier starts there (its
        history is not news)."""
        after = 0
        while True:
            page = self.store.events(self.run.id, after=after, limit=PAGE)
            if not page:
                return after
            after = page[-1].id

    def start(self) -> None:
        for courier in self.couriers.values():
            courier.start()
        self._thread.start()

    def _main(self) -> None:
        while not self._closing.wait(self.POLL_S):
            try:
                self.follow_once()
            except Exception:
                log.exception("notify: could not follow the run's events; going on")

    def follow_once(self, now: float | None = None) -> int:
        """Take in the events written since the last call; the number of notices stored."""
        with self._lock:
            events = self.store.events(self.run.id, after=self.position, limit=PAGE)
            position = events[-1].id if events else self.position
            notices = [n for h in self.watch.take(events) for n in self._notices(h)]
            notices += self._silences(time.time() if now is None else now)
            due = time.monotonic() - self._stored_at >= CURSOR_EVERY_S
            if not notices and (position == self._stored or not due):
                self.position = position
                return 0
            stored = self.store.add_notifications(
                self.lab, notices, cursor=(self._stored, position)
            )
            if stored is None:  # another notifier of this lab got there: it tells them
                log.warning("notify: another notifier follows lab %s; this one stops", self.lab)
                self._closing.set()
                return 0
            self.position = self._stored = position
            self._stored_at = time.monotonic()
            for sink in {n.sink for n in notices}:
                self.couriers[sink].wake()
            return len(notices)

    def _notices(self, h: Happening) -> list[Notice]:
        hearing = [s for s in self.sinks if s.config.hears(h.kind)]
        if not hearing:
            return []
        link = h.link
        if h.kind == "stopped" and self.report is not None:
            try:
                path = self.report()
            except Exception:
                log.exception("notify: could not write the morning report")
                path = None
            if path is not None:
                link = path.resolve().as_uri()
        return [
            Notice(s.name, h.kind, h.title, h.text, self.run.id, link, h.event_id) for s in hearing
        ]

    def _silences(self, now: float) -> list[Notice]:
        watching = [s for s in self.sinks if s.config.hears("stuck")]
        if not watching:
            return []
        silent = self.watch.silent(now, min(s.config.stuck_after for s in watching))
        out = []
        for agent, (since, state) in silent.items():
            for sink in watching:
                key = (agent, sink.name)
                if now - since < sink.config.stuck_after or self._told.get(key) == since:
                    continue
                self._told[key] = since
                out.append(
                    Notice(
                        sink.name,
                        "stuck",
                        f"agent {agent} is stuck: no turn and no trial for {span(now - since)}",
                        f"agent {agent} ({state}) was last heard of "
                        f"{time.strftime('%H:%M:%S', time.localtime(since))}; its terminal "
                        "and its trials are in the command center",
                        self.run.id,
                        "/",
                    )
                )
        return out

    def close(self, timeout: float = CLOSE_S) -> None:
        """Take in the last events (the run's stop), deliver what is queued within
        `timeout` (one try each), and stop."""
        self._closing.set()
        if self._thread.is_alive():
            self._thread.join()
        try:
            self.follow_once()
        except Exception:
            log.exception("notify: could not read the run's last events")
        now = time.monotonic()
        deadline = now + timeout
        closers = [
            threading.Thread(
                target=c.close,
                args=(now + min(timeout, FAILING_CLOSE_S) if c.failing else deadline,),
                daemon=True,
            )
            for c in self.couriers.values()
        ]
        for t in closers:
            t.start()
        for t in closers:
            t.join(max(0.0, deadline - time.monotonic()) + 1.0)
        late = [name for name, c in self.couriers.items() if c.alive()]
        if late:
            log.warning(
                "notify: %s did not answer in %gs; what they were sent stays queued for the "
                "next start",
                ", ".join(late), timeout,
            )  # fmt: skip


@contextlib.contextmanager
def lab_notifier(lab: Lab) -> Iterator[Notifier | None]:
    """The notifier of a started lab for the block (None when it has no sinks)."""
    sinks = sinks_of(lab.config, lab.org.config_path)
    if not sinks:
        yield None
        return

    def report() -> Path:
        from overnight.lab import report as morning
        from overnight.lab.ledger import LabStore, LabView

        view = LabView(LabStore(lab.org.root, lab.config.lab.name, lab.store, lab.org), lab.run,
                       lab.config)  # fmt: skip
        # the self-contained page (its Markdown twin is written beside it)
        return morning.write(view).with_suffix(".html")

    notifier = Notifier(
        lab.store, lab.run, lab.config, sinks, base_url=web_base(lab.paths), report=report
    )
    notifier.start()
    try:
        yield notifier
    finally:
        notifier.close()


# -- overnight notify test ---------------------------------------------------------------------


@dataclass(frozen=True)
class Answer:
    sink: str
    kind: str
    where: str
    delivered: bool
    said: str


def test(
    config: OrgConfig,
    config_file: Path | str,
    store: Store | None,
    run: Run | None,
    base_url: str | None = None,
) -> list[Answer]:
    """Send one test message to every sink (one try each, at once); what each answered.
    Recorded in `store` when one is given."""
    lab = config.lab.name
    answers = []
    run_id = run.id if run is not None else None
    for sink in sinks_of(config, config_file):
        if isinstance(sink, BrowserSink) and store is not None:
            sink.post = functools.partial(_post, store)
        item = Item(
            "test",
            f"a test message to sink {sink.name!r}",
            f"This is `overnight notify test` for lab {lab}: sink {sink.name!r} "
            f"({sink.kind}) reaches you.",
            "/notifications",
        )
        message = Message(lab, run_id, (item,), base_url)
        try:
            said, ok = sink.send(message), True
        except DeliveryError as exc:
            said, ok = str(exc), False
        # recorded once sent: a queued row would be the running notifier's to send again
        rows = None
        if store is not None:
            notice = Notice(sink.name, "test", item.title, item.text, run_id, item.link)
            rows = store.add_notifications(lab, [notice])
        if store is not None and rows:
            store.settle_notifications(
                [r.id for r in rows], "delivered" if ok else "failed", tries=1,
                answer=said if ok else None, error=None if ok else said,
            )  # fmt: skip
        answers.append(Answer(sink.name, sink.kind, sink.where(), ok, said))
    return answers
