"""Translation between the LLM wire formats the gateway speaks.

Owns how a request, a response, a stream and a usage record in one format
(Anthropic Messages, OpenAI Chat Completions, OpenAI Responses) become the same
thing in another, and which vendor-only state must go when a conversation moves
to a different vendor. Chat Completions is the common language: each other format
has its converters to and from it (`anthropic.py`, `responses.py`), and a
conversion between two others goes through it.

Knows nothing about HTTP, SSE framing, upstreams, routing, credentials or money:
every function takes and returns parsed JSON, and the stream converters take
parsed upstream events and return parsed client events. Stdlib only.

The stream converters share one contract: `feed()` each parsed upstream event
and send on what it returns; `finish()` closes the client's stream as a success,
so call it only once the upstream stream has ended, and look at `complete`
first: it is false when the upstream never said it was done (a cut stream). An
upstream error event raises `UpstreamStreamError`. `usage` holds the upstream's
own counts so far.

What cannot cross is dropped, never faked: thinking blocks and their signatures,
server-side tools (web search, code execution, local shell), reasoning items and
reasoning text, and which stop sequence ended an OpenAI reply.
"""

from overnight.gateway.translate.anthropic import (
    DEFAULT_MAX_TOKENS,
    AnthropicStreamToOpenAI,
    OpenAIStreamToAnthropic,
    anthropic_to_openai_request,
    anthropic_to_openai_response,
    openai_to_anthropic_request,
    openai_to_anthropic_response,
)
from overnight.gateway.translate.chunks import UpstreamStreamError
from overnight.gateway.translate.responses import (
    AnthropicStreamToResponses,
    ChatStreamToResponses,
    ClientTool,
    ResponsesTools,
    anthropic_to_responses_response,
    chat_to_responses_response,
    responses_to_chat_request,
    responses_tools,
)
from overnight.gateway.translate.usage import (
    Usage,
    usage_from_anthropic,
    usage_from_openai,
    usage_from_responses,
)
from overnight.gateway.translate.vendor_state import strip_vendor_state

__all__ = [
    "DEFAULT_MAX_TOKENS",
    "AnthropicStreamToOpenAI",
    "AnthropicStreamToResponses",
    "ChatStreamToResponses",
    "ClientTool",
    "OpenAIStreamToAnthropic",
    "ResponsesTools",
    "UpstreamStreamError",
    "Usage",
    "anthropic_to_openai_request",
    "anthropic_to_openai_response",
    "anthropic_to_responses_response",
    "chat_to_responses_response",
    "openai_to_anthropic_request",
    "openai_to_anthropic_response",
    "responses_to_chat_request",
    "responses_tools",
    "strip_vendor_state",
    "usage_from_anthropic",
    "usage_from_openai",
    "usage_from_responses",
]
