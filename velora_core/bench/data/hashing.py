"""Deterministic hashes that split, order and fingerprint the data (independent of PYTHONHASHSEED)."""

from __future__ import annotations

import hashlib


def unit_hash(key: str) -> float:
    """A deterministic number in [0, 1) from ``key`` (SHA-256, independent of PYTHONHASHSEED)."""
    return int(hashlib.sha256(key.encode()).hexdigest()[:13], 16) / 16**13


def short_hash(*parts: str | bytes) -> str:
    """SHA-256 (16 hex digits) over ``parts``, each NUL-terminated so that boundaries count."""
    digest = hashlib.sha256()
    for part in parts:
        digest.update(part.encode() if isinstance(part, str) else part)
        digest.update(b"\0")
    return digest.hexdigest()[:16]
