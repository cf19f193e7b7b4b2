"""The project's exception base: every error Outpost raises on purpose derives from it."""

from __future__ import annotations

__all__ = ["OutpostError"]


class OutpostError(Exception):
    """Base class for the errors Outpost raises on purpose.

    Catch this at the top of a command to turn an expected failure (a bad config, an unreachable
    broker) into a message and an exit status instead of a traceback. Subclasses carry their
    context (file, key path, source name, ...) in the message.
    """
