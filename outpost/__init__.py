"""Outpost's shared kernel: the wire contract, config loading, logging and the root CLI."""

__version__ = "0.1.0"
