"""overnight: a command center for autonomous agent labs."""

__version__ = "0.1.0"
