"""sip-controller: a call controller for phone agents on OpenAI's Realtime API over SIP."""

from __future__ import annotations

__version__ = "0.1.0"
