"""The project's hashes, defined once: canonical JSON, 16-hex-digit SHA-256 digests, and the
deterministic numbers that split and order data (independent of PYTHONHASHSEED). No torch."""

from __future__ import annotations

import hashlib
import json
from typing import Any

#: Hex digits kept of a SHA-256 digest: spec hashes, data and tokenizer fingerprints.
HASH_HEX_DIGITS = 16


def short_digest(digest: Any) -> str:
    """The first :data:`HASH_HEX_DIGITS` hex digits of a ``hashlib`` digest object."""
    return digest.hexdigest()[:HASH_HEX_DIGITS]


def canonical_json(payload: Any) -> str:
    """JSON with sorted keys and no spaces: equal payloads give equal text, hence equal hashes."""
    return json.dumps(payload, sort_keys=True, separators=(",", ":"))


def content_hash(payload: Any) -> str:
    """The hash of a JSON-able payload (a spec, an idempotent request): SHA-256 of its canonical JSON."""
    return short_digest(hashlib.sha256(canonical_json(payload).encode()))


def prompt_hash(text: str) -> str:
    """An evaluated item's prompt, hashed: the first :data:`HASH_HEX_DIGITS` hex digits of SHA-256
    of its UTF-8 text, so of lm-evaluation-harness's own ``prompt_hash`` for the same context."""
    return short_digest(hashlib.sha256(text.encode()))


def short_hash(*parts: str | bytes) -> str:
    """SHA-256 (16 hex digits) over ``parts``, each NUL-terminated so that boundaries count."""
    digest = hashlib.sha256()
    for part in parts:
        digest.update(part.encode() if isinstance(part, str) else part)
        digest.update(b"\0")
    return short_digest(digest)


def unit_hash(key: str) -> float:
    """A deterministic number in [0, 1) from ``key`` (SHA-256, independent of PYTHONHASHSEED)."""
    return int(hashlib.sha256(key.encode()).hexdigest()[:13], 16) / 16**13
