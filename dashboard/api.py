"""The dashboard's only way to the service: a small HTTP client of ``/api/v1`` with cached reads.

Reads are cached with short TTLs (``st.cache_data``) so a page that re-renders every few seconds, or
many people on one dashboard, do not turn into a request storm; a finished run never changes, so its
details are cached for longer. Writes clear the caches. Every failure becomes an :class:`ApiError`
whose message is written for a person (what went wrong, what to do), not a traceback.
"""

from __future__ import annotations

import json
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import httpx
import streamlit as st

from velora_core.contract.http_api import API_PREFIX, detail_text
from velora_core.contract.result import FINISHED_RUN_STATUSES

LIVE_TTL_S = 2.0  # runs, comparisons, metrics: what changes while a run trains
STATIC_TTL_S = 300.0  # presets: change only when the server is upgraded
FINISHED_TTL_S = 600.0  # a finished run's details are final
FIT_TIMEOUT_S = 660.0  # POST /fit runs up to the server's VELORA_FIT_TIMEOUT_S (600 s by default)
#: Threads that wait for POST /fit while the page shows the line (one per person waiting, at most 8).
_FIT_THREADS = ThreadPoolExecutor(max_workers=8, thread_name_prefix="velora-fit")


class ApiError(Exception):
    """A request that did not succeed, with a message fit to show as is."""

    def __init__(self, message: str, status_code: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.status_code = status_code


def describe_error(status_code: int, body: Any) -> str:
    """Words for an error response: FastAPI's ``detail`` (a string, or 422's list of field errors)."""
    detail = body.get("detail") if isinstance(body, dict) else None
    if isinstance(detail, list):
        return f"The API rejected the request: {detail_text(detail) or 'the request was not valid'}"
    if not detail:
        detail = body if isinstance(body, str) and body else f"HTTP {status_code}"
    if status_code == 401:
        return (
            f"The API needs a token: {detail}. Start the dashboard with VELORA_API_TOKEN set "
            "(`velora-bench up` does; `velora-bench token show` prints the token it made)."
        )
    if status_code == 404:
        return str(detail)
    if status_code >= 500:
        return f"The API had a problem ({status_code}): {detail}"
    return f"The API refused the request ({status_code}): {detail}"


@st.cache_resource(show_spinner=False)
def _http(base_url: str, token: str | None, timeout_s: float) -> httpx.Client:
    """The one HTTP client per API and token: every request it sends carries the bearer token."""
    headers = {"Accept": "application/json"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    return httpx.Client(base_url=base_url.rstrip("/") + API_PREFIX, headers=headers, timeout=timeout_s)


def _request(client: ApiClient, method: str, path: str, **kwargs: Any) -> Any:
    return _send(_http(client.base_url, client.token, client.timeout_s), client, method, path, **kwargs)


def _send(http: httpx.Client, client: ApiClient, method: str, path: str, **kwargs: Any) -> Any:
    try:
        response = http.request(method, path, **kwargs)
    except httpx.HTTPError as exc:
        raise ApiError(
            f"Cannot reach the API at {client.base_url} ({type(exc).__name__}: {exc}). "
            "Is it running? The dashboard reads its address from VELORA_API_URL."
        ) from None
    try:
        body = response.json()
    except ValueError:
        body = response.text
    if response.is_error:
        raise ApiError(describe_error(response.status_code, body), response.status_code)
    return body


def _params_key(params: dict[str, Any] | None) -> tuple:
    return tuple(sorted((k, tuple(v) if isinstance(v, list) else v) for k, v in (params or {}).items()))


# One cached reader per TTL; the client's fields are part of the cache key.
@st.cache_data(ttl=LIVE_TTL_S, show_spinner=False)
def _get_live(base_url: str, token: str | None, timeout_s: float, path: str, params: tuple) -> Any:
    return _request(ApiClient(base_url, token, timeout_s), "GET", path, params=list(_flatten(params)))


@st.cache_data(ttl=STATIC_TTL_S, show_spinner=False)
def _get_static(base_url: str, token: str | None, timeout_s: float, path: str) -> Any:
    return _request(ApiClient(base_url, token, timeout_s), "GET", path)


@st.cache_data(ttl=FINISHED_TTL_S, show_spinner=False, max_entries=2000)
def _get_final(base_url: str, token: str | None, timeout_s: float, path: str) -> Any:
    return _request(ApiClient(base_url, token, timeout_s), "GET", path)


@st.cache_data(ttl=STATIC_TTL_S, show_spinner=False, max_entries=200)
def _post_fit(base_url: str, token: str | None, body_json: str) -> Any:
    # A prediction depends only on the request (and the server's code): the same question is answered once.
    client = ApiClient(base_url, token, FIT_TIMEOUT_S)
    return _request(client, "POST", "/fit", content=body_json, headers={"Content-Type": "application/json"})


def _flatten(params: tuple) -> list[tuple[str, Any]]:
    out = []
    for key, value in params:
        if isinstance(value, tuple):
            out.extend((key, v) for v in value)
        elif value is not None:
            out.append((key, value))
    return out


@dataclass(frozen=True)
class ApiClient:
    """The API at ``base_url`` (e.g. ``http://127.0.0.1:8000``), with an optional bearer token."""

    base_url: str
    token: str | None = None
    timeout_s: float = 15.0

    def _live(self, path: str, params: dict[str, Any] | None = None) -> Any:
        return _get_live(self.base_url, self.token, self.timeout_s, path, _params_key(params))

    # --- reads ------------------------------------------------------------------------------------

    def health(self) -> dict[str, Any]:
        """``GET /health``; a 503 (database or broker down) is returned, not raised."""
        try:
            return self._live("/health")
        except ApiError as exc:
            if exc.status_code == 503:
                return {"status": "unavailable", "error": exc.message}
            raise

    def presets(self) -> dict[str, Any]:
        """Models, datasets, methods (with settings schemas), comparison presets and the server's limits."""
        return _get_static(self.base_url, self.token, self.timeout_s, "/presets")

    def comparisons(self, *, offset: int = 0, limit: int = 50) -> dict[str, Any]:
        return self._live("/comparisons", {"offset": offset, "limit": limit})

    def comparison(self, comparison_id: int, *, include_results: bool = False) -> dict[str, Any]:
        """A comparison with its runs and summary table; with ``include_results`` also each finished
        run's result (``results``: run id -> RunResult JSON; absent from an older server)."""
        params = {"include": "results"} if include_results else None
        return self._live(f"/comparisons/{int(comparison_id)}", params)

    def runs(
        self,
        *,
        status: list[str] | None = None,
        method: str | None = None,
        comparison_id: int | None = None,
        offset: int = 0,
        limit: int = 50,
    ) -> dict[str, Any]:
        """One page of runs, newest first, and the count over all pages."""
        params = {
            "status": list(status or []),
            "method": method,
            "comparison_id": comparison_id,
            "offset": offset,
            "limit": limit,
        }
        return self._live("/runs", params)

    def run(self, run_id: int) -> dict[str, Any]:
        """A run with its spec and result; cached longer once it has finished."""
        path = f"/runs/{int(run_id)}"
        run = self._live(path)
        if run["status"] in FINISHED_RUN_STATUSES:
            return _get_final(self.base_url, self.token, self.timeout_s, path)
        return run

    def finished_run(self, run_id: int) -> dict[str, Any]:
        """A run the caller knows has finished (its result is final): cached for minutes."""
        return _get_final(self.base_url, self.token, self.timeout_s, f"/runs/{int(run_id)}")

    def metrics(self, run_id: int) -> dict[str, Any]:
        """The run's training curve so far."""
        return self._live(f"/runs/{int(run_id)}/metrics", {"limit": 10_000})

    def fit(self, body: dict[str, Any]) -> dict[str, Any]:
        """``POST /fit``: each method's predicted peak for a model and shape (a FitRequest), and with
        ``gpu_gib`` whether it fits and the largest micro-batch; may take minutes, cached after."""
        return _post_fit(self.base_url, self.token, json.dumps(body, sort_keys=True))

    def fit_queue(self) -> dict[str, Any]:
        """``GET /fit/queue``: whether a prediction runs now and how many wait behind it."""
        return _request(self, "GET", "/fit/queue")

    def start_fit(self, body: dict[str, Any]) -> Future:
        """``POST /fit`` in a thread of its own, so the page can show the line while it waits; the
        future's result is the answer (or raises :class:`ApiError`). The server caches answers."""
        http = _http(self.base_url, self.token, FIT_TIMEOUT_S)  # here: the thread has no Streamlit context
        return _FIT_THREADS.submit(_send, http, self, "POST", "/fit", json=body)

    # --- writes -----------------------------------------------------------------------------------

    def create_comparison(self, body: dict[str, Any]) -> dict[str, Any]:
        """Queue a comparison: a ComparisonSpec, or ``{"preset": NAME, "overrides": {...}}``."""
        created = _request(self, "POST", "/comparisons", json=body)
        _get_live.clear()
        return created

    def cancel_run(self, run_id: int) -> dict[str, Any]:
        cancelled = _request(self, "POST", f"/runs/{int(run_id)}/cancel")
        _get_live.clear()
        return cancelled

    def cancel_comparison(self, comparison_id: int) -> dict[str, Any]:
        cancelled = _request(self, "POST", f"/comparisons/{int(comparison_id)}/cancel")
        _get_live.clear()
        return cancelled
