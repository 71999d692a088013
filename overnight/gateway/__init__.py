"""The gateway: one HTTP front for every LLM call an agent makes.

Serves the Anthropic Messages, OpenAI Chat Completions and OpenAI Responses
protocols; routes a model alias to upstream candidates with failover and circuit
breakers; translates between the wire formats; meters tokens and cost.
"""
