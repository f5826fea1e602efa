"""API bearer tokens: create, store hashed, find, touch, list, revoke and count."""

from __future__ import annotations

import hashlib
import secrets
from collections.abc import Sequence

from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from backend.store.base import StoreError, changed_rows
from backend.tables import ApiToken, utcnow

TOKEN_PREFIX = "vb_"


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def create_token(session: Session, *, name: str) -> tuple[ApiToken, str]:
    """A new random bearer token; the plain text is returned once and never stored."""
    plain = TOKEN_PREFIX + secrets.token_urlsafe(32)
    return add_token(session, name=name, token=plain), plain


def add_token(session: Session, *, name: str, token: str) -> ApiToken:
    """Store ``token`` (hashed) under ``name``; an already stored token is returned as it is."""
    token_hash = hash_token(token)
    existing = session.scalar(select(ApiToken).where(ApiToken.token_hash == token_hash))
    if existing is not None:
        if existing.revoked_at is not None:
            raise StoreError(f"token {existing.prefix}… was revoked; provision a new one")
        return existing
    row = ApiToken(name=name[:100], token_hash=token_hash, prefix=token[:10])
    session.add(row)
    session.flush()
    return row


def find_token(session: Session, *, token: str) -> ApiToken | None:
    """The active token row for a presented bearer token, or None."""
    return session.scalar(
        select(ApiToken).where(ApiToken.token_hash == hash_token(token), ApiToken.revoked_at.is_(None))
    )


def touch_token(session: Session, *, token_id: int) -> None:
    session.execute(update(ApiToken).where(ApiToken.id == token_id).values(last_used_at=utcnow()))


def list_tokens(session: Session) -> Sequence[ApiToken]:
    return session.scalars(select(ApiToken).order_by(ApiToken.id)).all()


def revoke_token(session: Session, *, token_id: int) -> bool:
    done = session.execute(
        update(ApiToken)
        .where(ApiToken.id == token_id, ApiToken.revoked_at.is_(None))
        .values(revoked_at=utcnow())
    )
    return changed_rows(done) == 1


def count_active_tokens(session: Session) -> int:
    return (
        session.scalar(select(func.count()).select_from(ApiToken).where(ApiToken.revoked_at.is_(None))) or 0
    )
