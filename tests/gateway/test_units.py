"""The gateway's pure parts: config and secrets, keys, prices, the breaker, budgets, SSE."""

from __future__ import annotations

import threading
from datetime import date
from pathlib import Path

import pytest
from pydantic import ValidationError

from overnight.costs.prices import PriceTable
from overnight.errors import ConfigError
from overnight.gateway import protocols
from overnight.gateway.breaker import Breaker, BreakerState
from overnight.gateway.codec import SSEReader
from overnight.gateway.config import Secret, load_gateway_config, read_secrets
from overnight.gateway.keys import KeyRing, key_hash
from overnight.gateway.meter import BudgetExhausted, Budgets
from overnight.gateway.protocols.chat import tokens_from_chat
from overnight.org.gateway import BudgetsConfig, GatewayConfig, PriceConfig
from tests.helpers.gateway import Clock

BASE = {
    "upstreams": [
        {
            "name": "anthropic",
            "protocol": "anthropic",
            "base_url": "https://api.anthropic.com",
            "credentials": [{"name": "main", "env": "ANTHROPIC_API_KEY"}],
        },
        {"name": "local", "protocol": "openai", "base_url": "http://127.0.0.1:8000/v1/"},
    ],
    "models": {"claude": ["anthropic/claude-sonnet-4-5", "local/qwen/qwen3-8b"]},
}


def test_config_defaults_and_checks() -> None:
    config = GatewayConfig.model_validate(BASE | {"timeouts": {"idle": "90s", "connect": 2}})
    assert (config.host, config.timeouts.idle, config.timeouts.connect) == ("127.0.0.1", 90.0, 2.0)
    assert config.upstream("local").root == "http://127.0.0.1:8000"
    assert config.max_body == 32 * 2**20
    with pytest.raises(ValidationError, match="names the upstream 'nowhere', and there is none"):
        GatewayConfig.model_validate(BASE | {"models": {"x": ["nowhere/m"]}})
    with pytest.raises(ValidationError, match="does not say which upstream serves it"):
        GatewayConfig.model_validate(BASE | {"models": {"x": ["anthropic"]}})
    with pytest.raises(ValidationError, match="Extra inputs are not permitted"):
        GatewayConfig.model_validate(BASE | {"timeout": {}})
    with pytest.raises(ValidationError, match="has neither env nor file"):
        GatewayConfig.model_validate(
            {"upstreams": [BASE["upstreams"][0] | {"credentials": [{"name": "x"}]}]}  # type: ignore[operator]
        )
    with pytest.raises(ValidationError, match="is not a duration"):
        GatewayConfig.model_validate(BASE | {"timeouts": {"idle": "soon"}})


def test_secrets_come_from_env_or_file_and_never_print(tmp_path: Path) -> None:
    config = GatewayConfig.model_validate(BASE)
    with pytest.raises(ConfigError) as err:
        read_secrets(config, environ={})
    message = str(err.value)
    assert "ANTHROPIC_API_KEY is not set" in message and "'anthropic'" in message
    assert "gateway.upstreams[anthropic].credentials[main]" in message and "fix:" in message
    secrets = read_secrets(config, environ={"ANTHROPIC_API_KEY": "sk-secret\n"})
    secret = secrets[("anthropic", "main")]
    assert secret.reveal() == "sk-secret"
    assert "sk-secret" not in repr(secrets) + str(secret)

    key_file = tmp_path / "key"
    with_file = BASE | {
        "upstreams": [
            BASE["upstreams"][0] | {"credentials": [{"name": "f", "file": str(key_file)}]}  # type: ignore[operator]
        ],
        "models": {},
    }
    config = GatewayConfig.model_validate(with_file)
    with pytest.raises(ConfigError, match="cannot read credential file"):
        read_secrets(config, environ={})
    key_file.write_text("sk-from-file\n")
    assert read_secrets(config, environ={})[("anthropic", "f")] == Secret("sk-from-file")


def test_keyring_keeps_only_hashes() -> None:
    ring = KeyRing()
    key = ring.issue("alice")
    other = ring.issue("bob")
    assert key.startswith("ovn-") and key != other
    assert ring.verify(key) == "alice" and ring.verify(other) == "bob"
    assert ring.verify("ovn-nope") is None and ring.verify(None) is None
    assert key not in str(ring.hashes) and ring.hashes[key_hash(key)] == "alice"
    restored = KeyRing(ring.hashes)
    assert restored.verify(key) == "alice"
    assert restored.revoke("alice") == 1 and restored.verify(key) is None


def test_prices_snapshots_dates_overrides_and_unpriced() -> None:
    table = PriceTable(
        {"local/qwen3": PriceConfig(input=0, output=0), "gpt-5": PriceConfig(input=1, output=2)}
    )
    sonnet = table.lookup("anthropic", "claude-sonnet-4-5-20250929")
    assert sonnet is not None and (sonnet.input, sonnet.cache_write) == (3, 3.75)
    cost = table.cost(
        "anthropic",
        "claude-sonnet-4-5",
        input_tokens=1000,
        output_tokens=100,
        cache_read_tokens=10_000,
        cache_write_tokens=2000,
    )
    assert cost.usd == pytest.approx((1000 * 3 + 100 * 15 + 10_000 * 0.3 + 2000 * 3.75) / 1e6)
    # An unknown model is unpriced, never free; a declared-free one costs exactly 0.
    unknown = table.cost("local", "mystery-7b", input_tokens=10, output_tokens=10)
    assert unknown.usd is None and unknown.unpriced
    assert table.cost("local", "qwen3", input_tokens=10, output_tokens=10).usd == 0
    assert table.lookup("openai", "gpt-5") == table.lookup("x", "gpt-5")  # override by model
    old = table.lookup("openai", "gpt-4o-2024-05-13", on=date(2024, 6, 1))
    new = table.lookup("openai", "gpt-4o", on=date(2025, 1, 1))
    assert old is not None and new is not None and (old.input, new.input) == (5, 2.5)


def test_breaker_cycle() -> None:
    clock = Clock()
    moves: list[tuple[str, str]] = []
    b = Breaker(2, 10, 25, clock, lambda old, new: moves.append((old, new)))
    assert b.acquire()
    b.failure()
    assert b.state is BreakerState.closed
    b.failure()
    assert b.state is BreakerState.open and not b.acquire() and not b.available()
    clock.advance(10)
    assert b.state is BreakerState.half_open and b.available()
    assert b.acquire() and not b.acquire()  # a single probe
    b.failure()
    clock.advance(19.9)
    assert b.state is BreakerState.open  # the cooldown doubled to 20
    clock.advance(0.1)
    assert b.acquire()
    b.release()  # a probe that told nothing frees the slot
    assert b.acquire()
    b.success()
    assert b.state is BreakerState.closed and b.acquire()
    assert moves == [
        ("closed", "open"),
        ("open", "half_open"),
        ("half_open", "open"),
        ("open", "half_open"),
        ("half_open", "closed"),
    ]


def test_budget_reservations_hold_under_thread_contention() -> None:
    budgets = Budgets(BudgetsConfig.model_validate({"org": {"total_usd": 1.0}}))
    admitted: list[float] = []
    lock = threading.Lock()

    def spend() -> None:
        for _ in range(200):
            try:
                reservation = budgets.reserve("a", 0.01)
            except BudgetExhausted:
                continue
            budgets.settle(reservation, 0.01)
            with lock:
                admitted.append(0.01)

    workers = [threading.Thread(target=spend) for _ in range(8)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    assert budgets.spent() == pytest.approx(sum(admitted))
    assert budgets.spent() <= 1.0 + 1e-9 and len(admitted) in (99, 100)


def test_sse_reader_reassembles_events_split_anywhere() -> None:
    stream = (
        b'event: message_start\r\ndata: {"a": 1}\r\n\r\n'
        b": keep-alive\n\n"
        b"event: ping\ndata: {}\n\n"
        b"data: [DONE]\n\n"
    )
    for size in (1, 2, 3, 7, 64):
        reader = SSEReader()
        events = []
        for i in range(0, len(stream), size):
            events += reader.feed(stream[i : i + size])
        assert [(e.name, e.data) for e in events] == [
            ("message_start", '{"a": 1}'),
            ("ping", "{}"),
            (None, "[DONE]"),
        ]
        assert not reader.pending


def test_chat_usage_and_completion_without_done() -> None:
    usage = {
        "prompt_tokens": 100,
        "completion_tokens": 20,
        "prompt_tokens_details": {"cached_tokens": 60, "cache_write_tokens": 10},
        "completion_tokens_details": {"reasoning_tokens": 5},
    }
    tokens = tokens_from_chat(usage)
    assert (tokens.input, tokens.cache_read, tokens.cache_write) == (30, 60, 10)
    assert (tokens.output, tokens.reasoning, tokens.total_input) == (20, 5, 100)
    watch = protocols.get("chat").watch(drop_usage_chunk=True)
    reader = SSEReader()
    chunks = (
        b'data: {"choices": [{"index": 0, "delta": {"content": "hi"}, "finish_reason": "stop"}]}\n\n'
        b'data: {"choices": [], "usage": {"prompt_tokens": 3, "completion_tokens": 1}}\n\n'
    )
    relayed = [watch.see(e)[1] for e in reader.feed(chunks)]
    assert relayed == [True, False]  # the usage the client did not ask for stays here
    assert watch.complete and not watch.done


def test_load_gateway_config_names_file_and_field(tmp_path: Path) -> None:
    path = tmp_path / "overnight.toml"
    path.write_text(
        '[gateway]\nport = 9000\n[[gateway.upstreams]]\nname = "a"\nprotocol = "anthropic"\n'
        'base_url = "https://api.anthropic.com"\n[gateway.models]\nclaude = ["a/claude-sonnet-4-5"]\n'
    )
    assert load_gateway_config(path).port == 9000
    path.write_text(
        '[gateway]\n[[gateway.upstreams]]\nname = "a"\nprotocol = "grpc"\nbase_url = "x"\n'
    )
    with pytest.raises(ConfigError) as err:
        load_gateway_config(path)
    assert str(err.value) == (
        f"{path}:4: gateway.upstreams[0].protocol: 'grpc' is not one of: anthropic, openai\n"
        "  fix: use one of: anthropic, openai"
    )
    path.write_text("[gateway\n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_gateway_config(path)
