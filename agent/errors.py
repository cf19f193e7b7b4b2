"""The agent's own exception types, in a module that imports nothing of the agent (so any
part may raise them without import cycles)."""

from __future__ import annotations

__all__ = ["SourceError"]


class SourceError(Exception):
    """A source could not read what it measures; the message names what and why."""
