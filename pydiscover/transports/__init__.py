"""Transports move datagrams (UDP, Redis pub/sub, an in-memory bus); they never parse packets."""

from __future__ import annotations
