"""Agents: the loop each agent runs and the supervisor that runs them all.

Owns when agents start, stop, and what they may still do in this invocation.
Knows nothing about the CLI, the web page, or how a trial is measured.
"""
