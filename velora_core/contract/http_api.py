"""What the HTTP clients (``velora-bench submit``, the dashboard) and the API agree on, defined once:
the path prefix of every endpoint and the words for an error answer's ``detail``. No torch, no httpx.
"""

from __future__ import annotations

from typing import Any

#: The path prefix of every API endpoint (``/api/v1/runs`` …).
API_PREFIX = "/api/v1"

#: Location parts that say where FastAPI found a value, not which field it is.
_REQUEST_PARTS = ("body", "query", "path")


def detail_text(detail: Any) -> str | None:
    """An error answer's ``detail`` as one line: a 422's list of field errors as ``loc: message``
    joined by ``"; "`` (pydantic's empty ``Value error,`` prefix dropped), a string as it is, None
    for nothing."""
    if isinstance(detail, list):
        problems = []
        for error in detail:
            if not isinstance(error, dict):
                problems.append(str(error))
                continue
            where = ".".join(str(p) for p in error.get("loc", ()) if p not in _REQUEST_PARTS)
            message = str(error.get("msg", error)).removeprefix("Value error, ")
            problems.append(f"{where}: {message}" if where else message)
        return " ".join("; ".join(problems).split()) or None
    if detail is None or detail == "":
        return None
    return " ".join(str(detail).split())
