"""FastAPI dependencies: sessions, settings, the dispatcher and bearer-token authentication.

Authentication (``Authorization: Bearer <token>``), secure by default as Jupyter is:

- writes always need a valid token; reads too unless ``VELORA_AUTH_READS=false``; every client,
  on this machine or not, presents one (``velora-bench up`` creates it and hands it to the dashboard
  and ``velora-bench submit``);
- ``VELORA_TRUST_LOCALHOST=true`` is the opt-out for a single-user laptop: a client on the loopback
  interface with no proxy headers then needs no token (so neither does any other local process or
  user). A request through a reverse proxy on the same host carries proxy headers and still needs one;
- a token that is presented but wrong is always refused, even from localhost.

Host names and cross-site browser writes are checked before this, by ``backend.api.hosts``.
"""

from __future__ import annotations

import ipaddress
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Annotated, TypeVar

from fastapi import Depends, HTTPException, Request
from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool

from backend import store
from backend.broker import Dispatcher
from backend.db import Database
from backend.settings import Settings

T = TypeVar("T")

_PROXY_HEADERS = (b"forwarded", b"x-forwarded-for", b"x-forwarded-host", b"x-real-ip")
_TOKEN_TOUCH_EVERY_S = 60.0


# Dependencies that do no I/O are ``async`` so that FastAPI does not send each of them through the
# thread pool: a poll of GET /runs then costs one thread hop (the route), which keeps the tail latency
# of many polling clients low.


async def get_settings(request: Request) -> Settings:
    return request.app.state.settings


async def get_db(request: Request) -> Database:
    return request.app.state.db


async def get_dispatcher(request: Request) -> Dispatcher:
    return request.app.state.dispatcher


async def get_session(db: Annotated[Database, Depends(get_db)]) -> AsyncIterator[Session]:
    """A read session (SQLite: deferred transaction). Creating it does no I/O; the route's queries
    run in the thread pool, and closing only returns the connection to the pool."""
    session = db.new_session()
    try:
        yield session
    finally:
        session.close()


async def get_write_session(db: Annotated[Database, Depends(get_db)]) -> AsyncIterator[Session]:
    """A session for requests that write (SQLite: ``BEGIN IMMEDIATE``); the route commits."""
    session = db.new_session(write=True)
    try:
        yield session
    finally:
        session.close()


def committed(session: Session, value: T) -> T:
    """End ``session``'s transaction, then return ``value``: what write routes return.

    FastAPI serialises a route's answer in the thread pool and closes the session only after that.
    A write transaction (on SQLite: the database's write lock) must not stay open while its request
    waits for a thread, or requests holding threads and waiting for the lock deadlock with it.
    """
    session.commit()
    return value


SettingsDep = Annotated[Settings, Depends(get_settings)]
# scope="function": the connection goes back to the pool when the route returns, not after the
# response has been sent to a (possibly slow) client.
SessionDep = Annotated[Session, Depends(get_session, scope="function")]
WriteSessionDep = Annotated[Session, Depends(get_write_session, scope="function")]
DispatcherDep = Annotated[Dispatcher, Depends(get_dispatcher)]
DatabaseDep = Annotated[Database, Depends(get_db)]


async def polled_read(db: Database, read: Callable[[], T]) -> T:
    """Run ``read``, a short, bounded query of a polled route: inline on the event loop for SQLite
    (a local file, no network wait: the hop to a worker thread and the GIL hand-offs cost more than
    the query, benchmarks/api_load.py), in the thread pool for a database across the network, where a
    slow or unreachable server must not stall every other request."""
    if db.is_sqlite:
        return read()
    return await run_in_threadpool(read)


@dataclass(frozen=True)
class Principal:
    """Who is calling: a token's name, or ``localhost`` for a trusted local client."""

    name: str
    token_id: int | None = None

    @property
    def scope(self) -> str:
        return f"token:{self.token_id}" if self.token_id is not None else self.name


ANONYMOUS = Principal(name="anonymous")


def _is_trusted_local(request: Request) -> bool:
    client = request.client
    if client is None:
        return False
    try:
        if not ipaddress.ip_address(client.host).is_loopback:
            return False
    except ValueError:
        return False
    return not any(name in _PROXY_HEADERS for name, _ in request.scope.get("headers", ()))


def _unauthorized(detail: str) -> HTTPException:
    return HTTPException(status_code=401, detail=detail, headers={"WWW-Authenticate": "Bearer"})


def _bearer_token(request: Request, *, write: bool) -> str | Principal:
    """The presented token, or the principal decided without one (raises 401 where one is needed)."""
    settings: Settings = request.app.state.settings
    header = request.headers.get("authorization")
    if header is None:
        if settings.trust_localhost and _is_trusted_local(request):
            return Principal(name="localhost")
        if write or settings.auth_reads:
            raise _unauthorized(
                "Missing bearer token: send it as `Authorization: Bearer <token>` (`velora-bench up` keeps "
                "one in its data dir: `velora-bench token show`; or `velora-bench token create`, or set "
                "VELORA_API_TOKEN on the server)"
            )
        return ANONYMOUS
    scheme, _, token = header.partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        raise _unauthorized("Malformed Authorization header: expected `Authorization: Bearer <token>`")
    return token


def _check_token(request: Request, token: str) -> Principal:
    db: Database = request.app.state.db
    with db.session() as session:
        row = store.find_token(session, token=token)
        if row is None:
            raise _unauthorized("Invalid or revoked API token")
        token_id, name = row.id, row.name
    _touch_token_throttled(request, token_id)
    return Principal(name=name, token_id=token_id)


def authenticate(request: Request, *, write: bool) -> Principal:
    """The caller's identity, or a 401 with what to do about it (blocking: looks tokens up)."""
    decided = _bearer_token(request, write=write)
    return decided if isinstance(decided, Principal) else _check_token(request, decided)


async def _authenticate(request: Request, *, write: bool) -> Principal:
    decided = _bearer_token(request, write=write)
    if isinstance(decided, Principal):
        return decided
    # Polling clients present the same token many times a second: a token checked within the last
    # VELORA_TOKEN_CACHE_S seconds is not looked up again (so a revocation takes effect within that).
    settings: Settings = request.app.state.settings
    cache: dict[str, tuple[float, Principal]] = request.app.state.token_cache
    key = store.hash_token(decided)
    hit = cache.get(key)
    if hit is not None and time.monotonic() - hit[0] < settings.token_cache_s:
        return hit[1]
    principal = await run_in_threadpool(_check_token, request, decided)
    if settings.token_cache_s > 0:
        if len(cache) > 10_000:
            cache.clear()
        cache[key] = (time.monotonic(), principal)
    return principal


def _touch_token_throttled(request: Request, token_id: int) -> None:
    # last_used_at is informative; write it at most once a minute per token to keep reads read-only.
    last_touch: dict[int, float] = request.app.state.token_touches
    now = time.monotonic()
    if now - last_touch.get(token_id, -_TOKEN_TOUCH_EVERY_S) < _TOKEN_TOUCH_EVERY_S:
        return
    last_touch[token_id] = now
    with request.app.state.db.write_session() as session:
        store.touch_token(session, token_id=token_id)


async def require_read(request: Request) -> Principal:
    return await _authenticate(request, write=False)


async def require_write(request: Request) -> Principal:
    return await _authenticate(request, write=True)


ReadAccess = Annotated[Principal, Depends(require_read)]
WriteAccess = Annotated[Principal, Depends(require_write)]
