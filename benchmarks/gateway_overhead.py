"""The gateway's added latency and throughput, side by side with the LiteLLM proxy.

Measured: for concurrency 1, 16 and 64, streaming and not, the latency of a
small LLM request (a 1.6 KB conversation, a short answer) sent
  - direct to a fake Anthropic upstream (`overnight fake-provider`): the baseline,
  - through the overnight gateway, as Anthropic Messages (`/v1/messages`,
    bytes relayed as they are: the Claude Code path) and as OpenAI Chat
    Completions (`/v1/chat/completions`, translated to and from Anthropic),
  - through the LiteLLM proxy (model `anthropic/...` with `api_base` at the
    same fake upstream), in the same two client formats,
and from those the added latency, (via a proxy) - (direct), at p50 and p99,
requests/s, and LiteLLM's added p99 as a multiple of ours. Both client formats
are compared against the same direct request, in the upstream's own format
(what a client without a proxy would send). Also printed: CPU time per request
of the server that answered (the fake for the direct path, else the proxy,
warm-up included), which explains the figures at concurrency 64: two cores,
shared by the load generator, the proxy and the fake, make that a throughput test.

Rounds, not one long run per path: a difference of two p99s taken minutes
apart on a shared 2-core machine mostly measures what else ran in between.
So each concurrency is measured in 5 rounds; a round sends on every path in
turn (direct, then through each proxy, the order rotated each round, every
path on its own: mixing them in one load would make the direct requests share
the machine with the proxy's work and shrink the difference), and yields one
added p50 and p99 per path from requests a few seconds apart. The figure is
the median of the rounds' differences, and the range of the p99 ones is
printed beside it, so a round that met a burst of outside load shows as a
wide range instead of moving the figure. The per-path tables pool every round.

How: the fake upstream, the gateway (`_gateway_runner.py`: served from a thread
as `overnight gateway` does, config built in code, upstream key from an
environment variable, every attempt metered into a SQLite store through
`StoreSink`, as `overnight run` does) and LiteLLM (one uvicorn worker; no
database; telemetry, callbacks, the cost-map download and access logs off)
each run in a process of their own on 127.0.0.1; this process is the load
generator: a raw HTTP/1.1 keep-alive client on uvloop + httptools,
`concurrency` connections, closed loop, the same client for every path.
Before each measurement the script waits until every server is idle (LiteLLM
goes on logging for ~1 s after a load), then warms up on the same connections.
LiteLLM is installed by this script into its own venv
(`build/bench/litellm-venv`, `litellm[proxy]==1.80.0`) on its first run (~40-75 s).
Its cells are capped at 12 s over all rounds (LiteLLM is 10-40x slower), so they
may hold fewer requests; the table says how many.

Targets (2-core machine): added p50 <= 1 ms at concurrency 1, added p99 <= 10 ms
at concurrency 64, added p99 at least 5x lower than LiteLLM's at concurrency 16.
Exit status 1 only when the gateway itself fails (does not start, or answers
requests wrongly); a target not met is printed, not an exit status.

    .venv/bin/python benchmarks/gateway_overhead.py [--quick] [--no-litellm]

Child logs go to build/bench/logs/.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from _bench import (
    BENCH_DIR,
    ROOT,
    Children,
    LoadResult,
    exit_on_sigterm,
    free_port,
    machine_line,
    ms,
    new_loop,
    ok_answer,
    percentile,
    request_bytes,
    run_load,
    start_fake,
    start_gateway,
    wait_ready,
)

LITELLM_VERSION = "1.80.0"
LITELLM_VENV = BENCH_DIR / "litellm-venv"
UPSTREAM_MODEL = "claude-sonnet-4-5-20250929"
"""A model both price tables know, so neither proxy takes an error path when pricing."""
ALIAS = "bench"
UPSTREAM_KEY_ENV = "BENCH_UPSTREAM_KEY"
LITELLM_MASTER_KEY = "sk-bench-litellm-master"
CONCURRENCY = (1, 16, 64)
ROUNDS = 5

SYSTEM = (
    "You are a careful research engineer working in a git repository. Propose one "
    "small change to train.py that may lower val_bpb, as a unified diff, and explain "
    "it in one sentence. Never touch prepare.py. "
) * 3
MESSAGES = [
    {
        "role": "user",
        "content": "Here is train.py:\n"
        + "".join(f"    x{i} = layer_{i}(x{i - 1})  # block {i}\n" for i in range(1, 20)),
    },
    {"role": "assistant", "content": "I would lower the learning rate warm-up to 200 steps."},
    {"role": "user", "content": "That was tried (trial 41, discarded). Propose something else."},
]


# --- LiteLLM --------------------------------------------------------------------------------


def ensure_litellm() -> tuple[Path | None, str]:
    """The `litellm` command of its own venv, installing it there on the first run.

    (path, "") when usable, else (None, why not).
    """
    exe = LITELLM_VENV / "bin" / "litellm"
    marker = LITELLM_VENV / f".installed-litellm-{LITELLM_VERSION}"
    if exe.exists() and marker.exists():
        return exe, ""
    BENCH_DIR.mkdir(parents=True, exist_ok=True)
    log = BENCH_DIR / "litellm-install.log"
    where = LITELLM_VENV.relative_to(ROOT)
    print(
        f"installing litellm[proxy]=={LITELLM_VERSION} into {where} (first run only, ~40-75 s)...",
        flush=True,
    )
    started = time.monotonic()
    steps = [
        [sys.executable, "-m", "venv", str(LITELLM_VENV)],
        [
            str(LITELLM_VENV / "bin" / "python"),
            "-m",
            "pip",
            "install",
            "--disable-pip-version-check",
            f"litellm[proxy]=={LITELLM_VERSION}",
        ],
    ]
    with open(log, "wb") as fh:
        for argv in steps:
            try:
                done = subprocess.run(
                    argv, stdout=fh, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, timeout=900
                )
            except (OSError, subprocess.TimeoutExpired) as exc:
                return None, f"`{' '.join(argv[:5])} ...` failed: {exc} (log: {log})"
            if done.returncode != 0:
                fh.flush()
                tail = "\n    ".join(log.read_text(errors="replace").splitlines()[-8:])
                return None, f"`{' '.join(argv[:5])} ...` exited {done.returncode}:\n    {tail}"
    if not exe.exists():
        return None, f"pip finished but {exe} is missing (log: {log})"
    marker.write_text(f"installed in {time.monotonic() - started:.0f}s\n")
    print(f"installed in {time.monotonic() - started:.0f}s", flush=True)
    return exe, ""


def litellm_files(fake_port: int) -> tuple[Path, Path]:
    """LiteLLM's config (one model, offline, no DB) and a logging config without access logs."""
    BENCH_DIR.mkdir(parents=True, exist_ok=True)
    config = BENCH_DIR / "litellm-config.yaml"
    config.write_text(
        f"""\
model_list:
  - model_name: {ALIAS}
    litellm_params:
      model: anthropic/{UPSTREAM_MODEL}
      api_base: http://127.0.0.1:{fake_port}
      api_key: os.environ/{UPSTREAM_KEY_ENV}
litellm_settings:
  telemetry: false
  num_retries: 0
  request_timeout: 60
  turn_off_message_logging: true
  callbacks: []
  success_callback: []
  failure_callback: []
general_settings:
  master_key: {LITELLM_MASTER_KEY}
  disable_spend_logs: true
  disable_error_logs: true
"""
    )
    logging = BENCH_DIR / "litellm-logging.json"
    logging.write_text(
        json.dumps(
            {
                "version": 1,
                "disable_existing_loggers": False,
                "handlers": {
                    "stderr": {"class": "logging.StreamHandler", "stream": "ext://sys.stderr"}
                },
                "root": {"handlers": ["stderr"], "level": "WARNING"},
                "loggers": {"uvicorn.access": {"level": "WARNING"}},
            }
        )
    )
    return config, logging


def start_litellm(children: Children, exe: Path, fake_port: int) -> int:
    config, logging = litellm_files(fake_port)
    port = free_port()
    argv = [str(exe), "--config", str(config), "--host", "127.0.0.1", "--port", str(port)]
    argv += ["--num_workers", "1", "--telemetry", "False", "--log_config", str(logging)]
    env = {
        UPSTREAM_KEY_ENV: "sk-fake-upstream",
        "LITELLM_LOCAL_MODEL_COST_MAP": "True",
        "LITELLM_LOG": "ERROR",
        "LITELLM_MODE": "PRODUCTION",
        "LITELLM_TELEMETRY": "False",
        "DISABLE_ADMIN_UI": "True",
        "NO_DOCS": "True",
    }
    children.start("litellm", argv, env)
    wait_ready(children, "litellm", f"http://127.0.0.1:{port}/health/liveliness", 180)
    return port


# --- what is sent ---------------------------------------------------------------------------


def anthropic_body(model: str, stream: bool) -> bytes:
    body = {"model": model, "max_tokens": 512, "system": SYSTEM, "messages": MESSAGES}
    return json.dumps({**body, "stream": stream}).encode()


def chat_body(model: str, stream: bool) -> bytes:
    messages = [{"role": "system", "content": SYSTEM}, *MESSAGES]
    body = {"model": model, "max_tokens": 512, "messages": messages, "stream": stream}
    return json.dumps(body).encode()


@dataclass(frozen=True)
class Way:
    """One way to send the request: who answers, in which client format."""

    label: str
    proxy: str  # "direct", "overnight", "litellm"
    fmt: str  # "messages" or "chat"


DIRECT = Way("direct to fake upstream (Messages)", "direct", "messages")
OURS_MSG = Way("overnight  /v1/messages", "overnight", "messages")
OURS_CHAT = Way("overnight  /v1/chat/completions", "overnight", "chat")
LITE_MSG = Way("litellm    /v1/messages", "litellm", "messages")
LITE_CHAT = Way("litellm    /v1/chat/completions", "litellm", "chat")


def request_for(path: Way, port: int, stream: bool, key: str) -> bytes:
    if path.fmt == "messages":
        model = UPSTREAM_MODEL if path.proxy == "direct" else ALIAS
        headers = {"anthropic-version": "2023-06-01"}
        if path.proxy == "litellm":
            headers["authorization"] = f"Bearer {key}"
        else:
            headers["x-api-key"] = key
        return request_bytes(port, "/v1/messages", headers, anthropic_body(model, stream))
    headers = {"authorization": f"Bearer {key}"}
    return request_bytes(port, "/v1/chat/completions", headers, chat_body(ALIAS, stream))


# --- running --------------------------------------------------------------------------------


@dataclass
class Cell:
    """One way of sending, at one concurrency, streaming or not: every round of it."""

    path: Way
    stream: bool
    concurrency: int
    rounds: list[LoadResult] = field(default_factory=list)
    cpu_seconds: float = 0.0
    """CPU time of the answering server (the fake for direct, else the proxy), warm-up included."""

    @property
    def latencies(self) -> list[float]:
        return [x for r in self.rounds for x in r.latencies]

    @property
    def errors(self) -> int:
        return sum(r.errors for r in self.rounds)

    @property
    def samples(self) -> list[str]:
        return [x for r in self.rounds for x in r.samples][:3]

    @property
    def rps(self) -> float:
        elapsed = sum(r.elapsed for r in self.rounds)
        return len(self.latencies) / elapsed if elapsed > 0 else 0.0

    @property
    def cpu_per_request(self) -> float:
        return self.cpu_seconds / max(1, sum(r.sent for r in self.rounds))

    def p(self, q: int) -> float:
        """Percentile `q` of every round's latencies together."""
        return percentile(self.latencies, q)


def added(via: Cell | None, base: Cell | None, q: int) -> list[float]:
    """Per round: percentile `q` through the proxy minus percentile `q` direct, same round."""
    if via is None or base is None:
        return []
    return [
        percentile(v.latencies, q) - percentile(b.latencies, q)
        for v, b in zip(via.rounds, base.rounds, strict=False)
        if v.latencies and b.latencies
    ]


def median(values: list[float]) -> float:
    return statistics.median(values) if values else math.nan


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer requests: a smoke run")
    parser.add_argument("--no-litellm", action="store_true", help="measure the gateway only")
    args = parser.parse_args()
    exit_on_sigterm()
    began = time.monotonic()

    if args.quick:
        rounds = 3
        counts = {1: 150, 16: 400, 64: 400}  # per round
        warmups = {1: 20, 16: 64, 64: 128}
        litellm_seconds = 2.0
    else:
        rounds = ROUNDS
        # A p99 needs enough requests behind it: at concurrency 64, 1200 a round left
        # 12 above it, so one scheduling hiccup of the box moved a round's p99 by 5 ms.
        counts = {1: 500, 16: 1200, 64: 3000}
        warmups = {1: 50, 16: 160, 64: 320}
        litellm_seconds = 12.0 / ROUNDS

    print("gateway_overhead: added latency of the overnight gateway vs the LiteLLM proxy")
    print(machine_line())
    print(f"python {platform.python_version()}; every server on 127.0.0.1, one process each")
    print(
        "added latency of both client formats is measured against the same direct request "
        "in the upstream's format (Anthropic Messages)"
    )
    print(
        f"request: {len(anthropic_body(UPSTREAM_MODEL, False))} B Anthropic Messages body "
        f"({len(chat_body(ALIAS, False))} B as Chat Completions); answer: a short text"
    )
    print("gateway: metering every attempt into a SQLite store (StoreSink), as `overnight run`")
    print(
        f"{rounds} rounds per concurrency; a round sends on every path in turn, its order "
        "rotated each round"
    )

    litellm_exe: Path | None = None
    litellm_why = "skipped (--no-litellm)"
    if not args.no_litellm:
        litellm_exe, litellm_why = ensure_litellm()

    failed_ours = False
    cells: dict[tuple[Way, bool, int], Cell] = {}
    with Children() as children:
        fake_port = start_fake(children, "fake-anthropic", "anthropic")
        config = {
            "upstreams": [
                {
                    "name": "fake",
                    "protocol": "anthropic",
                    "base_url": f"http://127.0.0.1:{fake_port}",
                    "credentials": [{"name": "main", "env": UPSTREAM_KEY_ENV}],
                }
            ],
            "models": {ALIAS: [f"fake/{UPSTREAM_MODEL}"]},
        }
        gateway = start_gateway(children, "gateway", config, {UPSTREAM_KEY_ENV: "sk-fake-upstream"})
        litellm_port: int | None = None
        if litellm_exe is not None:
            try:
                litellm_port = start_litellm(children, litellm_exe, fake_port)
            except RuntimeError as exc:
                litellm_why = f"did not start: {exc}"
                children.stop("litellm")
        targets: list[tuple[Way, int, str]] = [
            (DIRECT, fake_port, "sk-fake-upstream"),
            (OURS_MSG, gateway.port, gateway.key),
            (OURS_CHAT, gateway.port, gateway.key),
        ]
        if litellm_port is not None:
            targets += [
                (LITE_MSG, litellm_port, LITELLM_MASTER_KEY),
                (LITE_CHAT, litellm_port, LITELLM_MASTER_KEY),
            ]
        print(f"litellm {LITELLM_VERSION}: {'running' if litellm_port else litellm_why}")
        print()

        server = {"direct": "fake-anthropic", "overnight": "gateway", "litellm": "litellm"}
        loop = new_loop()
        try:
            # One request on every path first: a path that cannot answer is named at once.
            for path, port, key in list(targets):
                for stream in (False, True):
                    probe = loop.run_until_complete(
                        run_load(
                            port,
                            request_for(path, port, stream, key),
                            n=1,
                            concurrency=1,
                            check=ok_answer(stream),
                            warmup=0,
                            max_seconds=30,
                        )
                    )
                    if probe.errors:
                        why = "; ".join(probe.samples)
                        if path.proxy == "litellm":
                            print(f"{path.label.split()[0]} {path.fmt} path dropped: {why}")
                            targets = [t for t in targets if t[0] != path]
                            break
                        raise RuntimeError(f"{path.label} failed its first request: {why}")
            print(
                f"{'stream':<6} {'conc':>4}  {'path':<38} {'n':>5} {'err':>3} "
                f"{'p50 ms':>7} {'p99 ms':>7} {'req/s':>7} {'CPU us/req':>10}"
            )
            for stream in (False, True):
                for c in CONCURRENCY:
                    here = [(Cell(path, stream, c), path, port, key) for path, port, key in targets]
                    for r in range(rounds):
                        turn = r % len(here)
                        for cell, path, port, key in here[turn:] + here[:turn]:
                            lite = path.proxy == "litellm"
                            children.wait_quiet()
                            cpu_before = children.cpu_seconds(server[path.proxy])
                            result = loop.run_until_complete(
                                run_load(
                                    port,
                                    request_for(path, port, stream, key),
                                    n=counts[c],
                                    concurrency=c,
                                    check=ok_answer(stream),
                                    warmup=min(warmups[c], 20 * c) if lite else warmups[c],
                                    max_seconds=litellm_seconds if lite else 120.0,
                                )
                            )
                            cell.cpu_seconds += (
                                children.cpu_seconds(server[path.proxy]) - cpu_before
                            )
                            cell.rounds.append(result)
                    for cell, *_ in here:
                        cells[(cell.path, stream, c)] = cell
                        print(
                            f"{'yes' if stream else 'no':<6} {c:>4}  {cell.path.label:<38} "
                            f"{len(cell.latencies):>5} {cell.errors:>3} {ms(cell.p(50)):>7} "
                            f"{ms(cell.p(99)):>7} {cell.rps:>7.0f} "
                            f"{cell.cpu_per_request * 1e6:>10.0f}",
                            flush=True,
                        )
                        if cell.errors:
                            print(f"         errors: {'; '.join(cell.samples)}")
                            if cell.path.proxy != "litellm":
                                failed_ours = True
        finally:
            loop.close()
            for name in ("gateway", "fake-anthropic"):
                if not children.alive(name):
                    failed_ours = True
                    print(f"{name} died during the run:\n{children.log_tail(name)}")

    report(cells, rounds, litellm_port is not None, litellm_why)
    print(f"\ntotal time {time.monotonic() - began:.0f}s")
    return 1 if failed_ours else 0


def report(
    cells: dict[tuple[Way, bool, int], Cell], rounds: int, litellm: bool, litellm_why: str
) -> None:
    def add(path: Way, stream: bool, conc: int, q: int) -> list[float]:
        return added(cells.get((path, stream, conc)), cells.get((DIRECT, stream, conc)), q)

    print(
        f"\nadded latency = via proxy - direct (ms), per round; the median of {rounds} rounds, "
        "and the range of the p99 ones; req/s through the proxy"
    )
    print(
        f"{'stream':<6} {'conc':>4}  {'path':<34} {'added p50':>9} {'added p99':>9} "
        f"{'p99 range':>15} {'req/s':>7}"
    )
    for stream in (False, True):
        for conc in CONCURRENCY:
            for path in (OURS_MSG, OURS_CHAT, LITE_MSG, LITE_CHAT):
                cell = cells.get((path, stream, conc))
                if cell is None:
                    continue
                p99s = add(path, stream, conc, 99)
                spread = f"{ms(min(p99s))}..{ms(max(p99s))}" if p99s else "-"
                print(
                    f"{'yes' if stream else 'no':<6} {conc:>4}  {path.label:<34} "
                    f"{ms(median(add(path, stream, conc, 50))):>9} "
                    f"{ms(median(p99s)):>9} {spread:>15} {cell.rps:>7.0f}"
                )

    pairs = [(OURS_MSG, LITE_MSG, "Messages"), (OURS_CHAT, LITE_CHAT, "Chat Completions")]
    if litellm:
        print("\nLiteLLM added p99 / overnight added p99 (medians of rounds), same client format")
        print(
            f"{'format':<17} {'stream':<6} {'conc':>4} {'overnight':>10} {'litellm':>10} {'ratio':>8}"
        )
        for ours, lite, name in pairs:
            for stream in (False, True):
                for conc in CONCURRENCY:
                    a = median(add(ours, stream, conc, 99))
                    b = median(add(lite, stream, conc, 99))
                    if math.isnan(b):
                        continue
                    print(
                        f"{name:<17} {'yes' if stream else 'no':<6} {conc:>4} {ms(a):>10} "
                        f"{ms(b):>10} {ratio(a, b):>8}"
                    )
    else:
        print(f"\nLiteLLM: not measured ({litellm_why})")

    print("\ntargets (medians of rounds)")
    for path in (OURS_MSG, OURS_CHAT):
        for stream in (False, True):
            mode = f"{path.label.split()[1]:<22} {'stream' if stream else 'whole ':<6}"
            a = median(add(path, stream, 1, 50))
            print(f"  added p50 <= 1 ms at c=1      {mode} {ms(a):>7} ms  {verdict(a <= 0.001)}")
    for path in (OURS_MSG, OURS_CHAT):
        for stream in (False, True):
            mode = f"{path.label.split()[1]:<22} {'stream' if stream else 'whole ':<6}"
            a = median(add(path, stream, 64, 99))
            print(f"  added p99 <= 10 ms at c=64    {mode} {ms(a):>7} ms  {verdict(a <= 0.010)}")
    for ours, lite, _ in pairs:
        for stream in (False, True):
            mode = f"{ours.label.split()[1]:<22} {'stream' if stream else 'whole ':<6}"
            a = median(add(ours, stream, 16, 99))
            b = median(add(lite, stream, 16, 99))
            if math.isnan(b):
                print(f"  >= 5x lower added p99 than LiteLLM at c=16  {mode} not measured")
                continue
            met = a <= 0 < b or (a > 0 and b / a >= 5)
            print(
                f"  >= 5x lower added p99 than LiteLLM at c=16  {mode} {ratio(a, b):>7}  {verdict(met)}"
            )


def ratio(ours: float, theirs: float) -> str:
    if math.isnan(ours) or math.isnan(theirs):
        return "-"
    if ours <= 0:
        return "ours<=0"
    return f"{theirs / ours:.1f}x"


def verdict(met: bool) -> str:
    return "met" if met else "NOT MET"


if __name__ == "__main__":
    try:
        sys.exit(main())
    except RuntimeError as exc:
        print(f"gateway_overhead: {exc}", file=sys.stderr)
        sys.exit(1)
    except KeyboardInterrupt:
        sys.exit(130)
