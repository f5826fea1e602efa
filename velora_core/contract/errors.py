"""The one-line form of a pydantic ``ValidationError`` that the CLI, the spec and the presets print
(the API answers the same errors as a JSON list: ``backend/api/validation.py``). No torch."""

from __future__ import annotations

from pydantic import ValidationError


def validation_message(exc: ValidationError, *, prefix: str = "", whole: str | None = "(spec)") -> str:
    """``loc: message`` for every error of ``exc``, joined by ``"; "``.

    Args:
        exc: the error.
        prefix: put before every location (``"overrides."``).
        whole: the location shown for an error about the whole object (no location); None shows
            the message alone.
    """
    parts = []
    for error in exc.errors(include_url=False, include_input=False):
        message = error["msg"].removeprefix("Value error, ")
        loc = ".".join(str(p) for p in error["loc"])
        where = f"{prefix}{loc}" if loc else whole
        parts.append(f"{where}: {message}" if where else message)
    return "; ".join(parts)
