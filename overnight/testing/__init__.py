"""Test doubles that speak real protocols over real sockets.

Owns the fake LLM provider (scripted replies, injected faults, Anthropic and
OpenAI wire formats over HTTP on 127.0.0.1) used by the gateway's tests and
benchmarks and by users rehearsing an outage. Knows the gateway only by its wire
protocol objects (which endpoints there are), nothing about the store or the lab:
it is a stand-in for someone else's server.
"""

from overnight.testing.fake_provider import FakeProvider, Fault, serve
from overnight.testing.replies import Reply, ToolCall, Usage, load_script

__all__ = ["FakeProvider", "Fault", "Reply", "ToolCall", "Usage", "load_script", "serve"]
