"""Message formats Meridian reads and writes (HL7 v2 today). No network code lives here."""

from __future__ import annotations

__all__: list[str] = []
