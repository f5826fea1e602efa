"""Checks at the edge, before any route: more headers than ``VELORA_HTTP_MAX_HEADERS`` (431), text
the database cannot store, bodies nested too deep to process, and ``HEAD`` wherever ``GET`` is served.

- NUL: PostgreSQL's text columns cannot hold U+0000 (``psycopg.DataError``, a 500), and no name,
  path, split or filter needs one. A NUL anywhere in the query string, the path, or any string (or
  key) of a JSON body is a 422 naming where it is, whatever the route does with the field.
- Depth: a JSON body nested deeper than :data:`MAX_JSON_DEPTH` is a 422 (500 levels of ``overrides``
  made ``deep_merge`` raise ``RecursionError``, a 500). No valid request is deeper than ~8.
- ``HEAD``: answered as the ``GET`` of the same URL without its body (FastAPI routes serve only the
  methods they name; monitors and ``curl -I`` send HEAD).

The body is read here only for requests that carry one, after ``BodySizeLimitMiddleware`` (so at
most ``VELORA_MAX_REQUEST_BYTES``), and handed on unchanged.
"""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import parse_qsl, unquote

from starlette.types import ASGIApp, Message, Receive, Scope, Send

#: The deepest JSON body accepted (objects and arrays inside each other).
MAX_JSON_DEPTH = 32
_NUL_MESSAGE = "must not contain NUL (\\u0000) characters"
_BODY_METHODS = frozenset({"POST", "PUT", "PATCH"})


def _body_problem(value: Any) -> tuple[list[str | int], str] | None:
    """Where ``value`` (parsed JSON) holds a NUL or nests too deep, and what; None if nowhere.
    Iterative: the walk itself must not recurse as deep as the input."""
    stack: list[tuple[Any, list[str | int]]] = [(value, [])]
    while stack:
        item, loc = stack.pop()
        if len(loc) > MAX_JSON_DEPTH:
            return loc[:MAX_JSON_DEPTH], f"nests deeper than {MAX_JSON_DEPTH} levels"
        if isinstance(item, str):
            if "\x00" in item:
                return loc, f"text {_NUL_MESSAGE}"
        elif isinstance(item, dict):
            for key, child in item.items():
                if "\x00" in key:
                    return loc, f"field names {_NUL_MESSAGE}"
                stack.append((child, [*loc, key]))
        elif isinstance(item, list):
            stack.extend((child, [*loc, index]) for index, child in enumerate(item))
    return None


def _query_problem(scope: Scope) -> tuple[list[str | int], str] | None:
    if "\x00" in scope.get("path", ""):
        return ["path"], f"the URL path {_NUL_MESSAGE}"
    query = scope.get("query_string", b"").decode("latin-1")
    if "%00" not in query and "\x00" not in query:
        return None
    for name, value in parse_qsl(query, keep_blank_values=True):
        if "\x00" in name or "\x00" in value:
            return ["query", name.replace("\x00", "\\u0000")], f"query parameters {_NUL_MESSAGE}"
    if "\x00" in unquote(query):
        return ["query"], f"the query string {_NUL_MESSAGE}"
    return None


class EdgeMiddleware:
    """Pure ASGI: the checks above; everything else passes through untouched."""

    def __init__(self, app: ASGIApp, max_headers: int) -> None:
        self.app = app
        self.max_headers = max_headers

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if len(scope["headers"]) > self.max_headers:
            detail = f"More than {self.max_headers} request headers (VELORA_HTTP_MAX_HEADERS)"
            await _send_json(send, 431, {"detail": detail})
            return
        problem = _query_problem(scope)
        if problem is not None:
            await _refuse(send, *problem)
            return
        if scope["method"] == "HEAD":
            await self.app({**scope, "method": "GET"}, receive, _without_body(send))
            return
        if scope["method"] not in _BODY_METHODS:
            await self.app(scope, receive, send)
            return
        chunks, more = [], True
        while more:
            message = await receive()
            if message["type"] != "http.request":  # the client went away
                return
            chunks.append(message.get("body", b""))
            more = message.get("more_body", False)
        body = b"".join(chunks)
        problem = _json_problem(body)
        if problem is not None:
            await _refuse(send, ["body", *problem[0]], problem[1])
            return
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)


def _json_problem(body: bytes) -> tuple[list[str | int], str] | None:
    if not body:
        return None
    try:
        parsed = json.loads(body)
    except RecursionError:
        return [], f"nests deeper than {MAX_JSON_DEPTH} levels"
    except ValueError:
        return None  # not JSON: the route says so in its own words (415 or 422)
    return _body_problem(parsed)


def _without_body(send: Send) -> Send:
    async def send_head(message: Message) -> None:
        if message["type"] == "http.response.body":
            message = {**message, "body": b""}
        await send(message)

    return send_head


async def _refuse(send: Send, loc: list[str | int], msg: str) -> None:
    detail = [{"loc": [str(p) if isinstance(p, str) else p for p in loc], "msg": msg, "type": "value_error"}]
    await _send_json(send, 422, {"detail": detail})


async def _send_json(send: Send, status: int, content: dict[str, Any]) -> None:
    body = json.dumps(content).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())],
        }
    )
    await send({"type": "http.response.body", "body": body})
