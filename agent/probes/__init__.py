"""The network probes behind the ``probes`` source, one module per kind.

``icmp`` (echo), ``tcp`` (connect), ``dns`` (one UDP query), ``http`` (GET, with TLS), and
``common`` (the result type, errors, and the bounded concurrent runner). Each module keeps
packet building and parsing in pure functions apart from its socket I/O. The source that
drives them, with its config, is agent/sources/probes.py.
"""

from __future__ import annotations

from agent.probes.common import ProbeError, ProbeResult

__all__ = ["ProbeError", "ProbeResult"]
