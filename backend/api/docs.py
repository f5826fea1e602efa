"""What the API says about itself: documented error answers, ``Allow`` on 405, the OpenAPI document's
extra schemas, and Swagger UI served from an installed package (``/docs`` works air-gapped)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from fastapi import APIRouter, FastAPI, Request
from fastapi.exception_handlers import http_exception_handler
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import HTMLResponse, Response
from fastapi.routing import APIRoute
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel
from pydantic.json_schema import models_json_schema
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match

from backend.api.schemas import ErrorPublic

DOCS_ASSETS = "/docs/assets"

_ERROR_WORDS = {
    400: "The Host header names no host this server answers to (VELORA_ALLOWED_HOSTS)",
    401: "No valid bearer token where one is needed",
    403: "A cross-site write from a browser (Origin or Sec-Fetch-Site), refused",
    404: "No such resource",
    409: "The request conflicts with the resource's state",
    413: "The request body is larger than this server accepts (VELORA_MAX_REQUEST_BYTES)",
    415: "The request body is not sent as application/json",
    429: "Past this caller's quota (queued runs or submissions per minute); Retry-After says when to retry",
    503: "The database is unavailable, or (fit) another prediction is running; try again shortly",
    504: "The prediction ran past this server's time limit (VELORA_FIT_TIMEOUT_S)",
}


#: The rules a spec is held to beyond what its JSON schema says (they depend on several fields, on
#: the model's layers, or on this server's settings); a request that breaks one is a 422 naming it.
SPEC_RULES = """
**Rules beyond the schema** (each broken one is a 422 naming the field):

- `method` (and each of `methods`): a base (`full`, `lora`, `qlora`, `galore`, `lora-fa`) plus
  techniques (`velora`, `gc`, `8bit`, `offload`) joined by `+`, each at most once; `lora-fa` and
  `velora` do not combine; `offload` and `galore+8bit` need a CUDA `device`. `method_config` /
  `method_configs` hold only the sections the method is made of.
- `model`: `source: preset` names one of `GET /presets` `models`; `hub` a hub id (`org/name`);
  `local` an absolute folder under `VELORA_LOCAL_ROOTS`; `artifact` a `pretrain` run (one level
  only). A `finetune` of a preset model needs `pretrain` or `memory_only: true`.
- `dataset`: `source: builtin` names one of `GET /presets` `datasets` and suits the workload; `local`
  an absolute file or folder under `VELORA_LOCAL_ROOTS`, at most `VELORA_MAX_DATASET_BYTES`, whose
  card names only files inside it.
- Shapes: `seq_len` within the model's positions; VeLoRA's `num_groups` (or `sub_token_size`) within
  each targeted layer's input features; `target_modules` (module-name suffixes or RE2 regular
  expressions, full match) must match at least one layer.
- This server's limits: `VELORA_MAX_STEPS`, `VELORA_MAX_MICRO_BATCH`, `VELORA_MAX_SEQ_LEN`,
  `VELORA_MAX_RUNS_PER_COMPARISON` (methods × seeds).
- Types are strict: integers are JSON integers (`true` and `2.0` are refused), numbers are numbers,
  booleans are booleans. No text may contain NUL (U+0000); no body nests deeper than 32 levels.
- Quotas (429 with `Retry-After`): `VELORA_MAX_QUEUED_RUNS_PER_TOKEN` runs queued or waiting per
  token, `VELORA_MAX_SUBMISSIONS_PER_MINUTE` accepted submissions per token per minute.
"""

#: ``POST /fit``'s rules beyond its schema.
FIT_RULES = """
**Rules beyond the schema** (each broken one is a 422 naming the field): `model` is one of
`GET /presets` `models` or a hub id (`org/name`; this server reads its `config.json` from the hub), or
any label when `config` (a pasted `config.json` of at most 100,000 characters) describes the model;
each of `methods` is a method name as for runs (a base and techniques joined by `+`, e.g.
`velora+lora`, `full+8bit`), none repeated and none needing CUDA; `seq_len` is within the model's
positions; `method_configs` is not offered here (use `velora-bench fit`). Integers are strict.
"""


def add_rules(router: APIRouter, endpoint: Any, rules: str) -> None:
    """Append ``rules`` to the description (the docstring) of ``endpoint``'s route in ``router``.
    Call before the router is included in another (inclusion copies routes)."""
    for route in router.routes:
        if isinstance(route, APIRoute) and route.endpoint is endpoint:
            route.description = f"{route.description.rstrip()}\n{rules}"


def error_responses(*codes: int) -> dict[int | str, dict[str, Any]]:
    """``responses=`` for a router or route: each code answers the shared error body."""
    return {code: {"model": ErrorPublic, "description": _ERROR_WORDS[code]} for code in codes}


#: The methods an ``Allow`` header can name (no route here answers OPTIONS or TRACE).
_METHODS = ("DELETE", "GET", "HEAD", "PATCH", "POST", "PUT")


def _allowed_methods(request: Request) -> list[str]:
    """Every method some route serves at this path (Starlette's 405 names only the first route's)."""
    routes = request.app.router.routes
    return [
        method
        for method in _METHODS
        if any(route.matches({**request.scope, "method": method})[0] == Match.FULL for route in routes)
    ]


async def _method_not_allowed(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, StarletteHTTPException)
    exc.headers = {**(exc.headers or {}), "Allow": ", ".join(_allowed_methods(request))}
    return await http_exception_handler(request, exc)


#: The OpenAPI name of the bearer-token scheme (``Authorization: Bearer <token>``, backend.api.deps).
BEARER_SCHEME = "bearerAuth"


def declare_bearer(schema: dict[str, Any]) -> None:
    """Declare the bearer scheme and require it on every operation that answers 401 without it, so
    Swagger UI offers "Authorize" and sends the token with each "Try it out"."""
    schema.setdefault("components", {}).setdefault("securitySchemes", {})[BEARER_SCHEME] = {
        "type": "http",
        "scheme": "bearer",
        "description": "The API token: `velora-bench token show` prints it (`velora-bench up` makes one).",
    }
    for operations in schema.get("paths", {}).values():
        for operation in operations.values():
            if isinstance(operation, dict) and "401" in operation.get("responses", {}):
                operation["security"] = [{BEARER_SCHEME: []}]


def add_schemas(app: FastAPI, models: Iterable[type[BaseModel]]) -> None:
    """Put ``models`` (and what they reference) in ``components.schemas``: for request bodies that a
    route parses itself and describes with ``openapi_extra`` ``$ref``s; and declare the bearer
    scheme (:func:`declare_bearer`)."""
    generate = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = generate()
            _, defs = models_json_schema(
                [(m, "validation") for m in models], ref_template="#/components/schemas/{model}"
            )
            components = schema.setdefault("components", {}).setdefault("schemas", {})
            for name, definition in defs.get("$defs", {}).items():
                components.setdefault(name, definition)
            declare_bearer(schema)
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]


def serve_docs(app: FastAPI, *, openapi_url: str) -> None:
    """``/docs``: Swagger UI from the ``swagger-ui-bundle-v2`` package (no CDN), and answers 405
    with every method the path allows."""
    from swagger_ui_bundle import swagger_ui_path

    app.mount(DOCS_ASSETS, StaticFiles(directory=swagger_ui_path), name="swagger-ui-assets")
    app.add_exception_handler(405, _method_not_allowed)

    @app.get("/docs", include_in_schema=False)
    def _docs() -> HTMLResponse:
        return get_swagger_ui_html(
            openapi_url=openapi_url,
            title=f"{app.title} — API",
            swagger_js_url=f"{DOCS_ASSETS}/swagger-ui-bundle.js",
            swagger_css_url=f"{DOCS_ASSETS}/swagger-ui.css",
            swagger_favicon_url=f"{DOCS_ASSETS}/favicon-32x32.png",
            swagger_ui_parameters={"persistAuthorization": True},
        )
