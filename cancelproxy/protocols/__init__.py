"""The generation protocols: one module per wire format, registered here.

Adding a protocol is one module (a ``WireProtocol`` and its ``Transcript``,
see ``base.py``) and one line in ``PROTOCOLS``.
"""

from __future__ import annotations

from .base import Answer, Prepared, RequestFacts, Transcript, WireProtocol
from .chat import CHAT
from .completions import COMPLETIONS
from .messages import MESSAGES
from .responses import RESPONSES

__all__ = ["PROTOCOLS", "PROTOCOLS_BY_NAME", "Answer", "Prepared", "RequestFacts", "Transcript", "WireProtocol"]

PROTOCOLS: tuple[WireProtocol, ...] = (CHAT, RESPONSES, MESSAGES, COMPLETIONS)
PROTOCOLS_BY_NAME: dict[str, WireProtocol] = {protocol.name: protocol for protocol in PROTOCOLS}
