"""Bearer tokens: required for writes (from localhost too), configurable for reads, stored hashed;
Host names and cross-site browser writes refused."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager

import pytest
from fastapi.testclient import TestClient
from pydantic import SecretStr
from sqlalchemy import text

from backend import store
from backend.api.main import create_app
from backend.db import Database
from backend.settings import Settings
from tests.backend.conftest import tiny_run


@contextmanager
def app_client(
    settings: Settings, client_host: str = "testclient", **changes: object
) -> Iterator[TestClient]:
    with TestClient(create_app(settings.model_copy(update=changes)), client=(client_host, 50000)) as client:
        yield client


def test_write_without_token_is_401_with_instructions(client: TestClient) -> None:
    response = client.post("/api/v1/runs", json=tiny_run())
    assert response.status_code == 401
    assert response.headers["www-authenticate"] == "Bearer"
    assert "velora-bench token create" in response.json()["detail"]


def test_invalid_token_is_401(client: TestClient) -> None:
    for header in ("Bearer vb_not-a-token", "Bearer ", "Basic dXNlcjpwYXNz", "vb_token-without-scheme"):
        response = client.post("/api/v1/runs", json=tiny_run(), headers={"Authorization": header})
        assert response.status_code == 401, header
    assert client.get("/api/v1/runs", headers={"Authorization": "Bearer wrong"}).status_code == 401


def test_valid_token_writes_and_reads(client: TestClient, auth: dict) -> None:
    created = client.post("/api/v1/runs", json=tiny_run(), headers=auth)
    assert created.status_code == 201
    assert client.get(f"/api/v1/runs/{created.json()['id']}", headers=auth).status_code == 200


def test_reads_need_a_token_by_default(client: TestClient) -> None:
    for path in ("/api/v1/runs", "/api/v1/comparisons", "/api/v1/presets", "/api/v1/runs/1/metrics"):
        assert client.get(path).status_code == 401, path


def test_reads_can_be_opened(settings: Settings, db: Database) -> None:
    with app_client(settings, auth_reads=False) as client:
        assert client.get("/api/v1/runs").status_code == 200
        assert client.get("/api/v1/presets").status_code == 200
        assert client.post("/api/v1/runs", json=tiny_run()).status_code == 401  # writes stay closed


def test_localhost_needs_a_token_by_default(settings: Settings, db: Database) -> None:
    configured = SecretStr("vb_configured-on-the-server")
    for host in ("127.0.0.1", "::1"):
        with app_client(settings, client_host=host, api_token=configured) as client:
            refused = client.post("/api/v1/runs", json=tiny_run())
            assert refused.status_code == 401, host
            assert refused.headers["www-authenticate"] == "Bearer"
            assert client.get("/api/v1/runs").status_code == 401
            headers = {"Authorization": f"Bearer {configured.get_secret_value()}"}
            assert client.post("/api/v1/runs", json=tiny_run(), headers=headers).status_code == 201


def test_trust_localhost_restores_tokenless_local_access(settings: Settings, db: Database) -> None:
    with app_client(settings, client_host="127.0.0.1", trust_localhost=True) as client:
        assert client.post("/api/v1/runs", json=tiny_run()).status_code == 201
        assert client.get("/api/v1/runs").status_code == 200
        # ...but a wrong token is still refused, and a proxied request is not "local".
        assert client.get("/api/v1/runs", headers={"Authorization": "Bearer wrong"}).status_code == 401
        for header in ("X-Forwarded-For", "Forwarded", "X-Real-IP"):
            proxied = client.post("/api/v1/runs", json=tiny_run(), headers={header: "203.0.113.9"})
            assert proxied.status_code == 401, header
    with app_client(settings, client_host="::1", trust_localhost=True) as client:
        assert client.get("/api/v1/runs").status_code == 200
    with app_client(settings, client_host="10.1.2.3", trust_localhost=True) as client:
        assert client.post("/api/v1/runs", json=tiny_run()).status_code == 401


def test_trust_localhost_is_off_by_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("VELORA_TRUST_LOCALHOST", raising=False)
    assert Settings().trust_localhost is False
    monkeypatch.setenv("VELORA_TRUST_LOCALHOST", "true")
    assert Settings().trust_localhost is True


def test_unknown_host_header_is_400(settings: Settings, db: Database, auth: dict) -> None:
    with app_client(settings, client_host="127.0.0.1") as client:
        for host in ("evil.example", "evil.example:8000", "127.0.0.1.evil.example", "[::1", "localhost:x"):
            response = client.get("/api/v1/health", headers={"Host": host})
            assert response.status_code == 400, host
            assert "VELORA_ALLOWED_HOSTS" in response.json()["detail"], host
        rebound = client.post("/api/v1/runs", json=tiny_run(), headers={**auth, "Host": "evil.example"})
        assert rebound.status_code == 400  # refused before the token is even looked at
        for host in ("localhost", "localhost:8000", "127.0.0.1:8000", "[::1]:8000", "TestServer"):
            assert client.get("/api/v1/health", headers={"Host": host}).status_code == 200, host
    with app_client(settings, allowed_hosts=["*.example.com"]) as client:
        assert client.get("/api/v1/health", headers={"Host": "bench.example.com:443"}).status_code == 200
        assert client.get("/api/v1/health", headers={"Host": "example.com.evil"}).status_code == 400
    with app_client(settings, allowed_hosts=["*"]) as client:
        assert client.get("/api/v1/health", headers={"Host": "anything.example"}).status_code == 200


def test_allowed_hosts_are_read_comma_separated(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VELORA_ALLOWED_HOSTS", " bench.Example.com, ,gpu-box ")
    assert Settings().allowed_hosts == ["bench.example.com", "gpu-box"]


def test_cross_site_write_is_403(settings: Settings, db: Database, auth: dict) -> None:
    with app_client(settings, client_host="127.0.0.1", trust_localhost=True) as client:
        for headers in (
            {"Origin": "https://evil.example"},
            {"Origin": "null"},
            {"Origin": "http://testserver.evil.example"},
            {"Origin": "http://localhost:3000"},  # another origin on this machine
            {"Sec-Fetch-Site": "cross-site"},
        ):
            for extra in ({}, auth):  # a token does not make a cross-site browser write acceptable
                response = client.post("/api/v1/runs", json=tiny_run(), headers={**headers, **extra})
                assert response.status_code == 403, headers
                assert response.json()["detail"].startswith("Cross-site write refused"), headers
            assert client.post("/api/v1/runs/1/cancel", headers=headers).status_code == 403
            assert client.get("/api/v1/runs", headers=headers).status_code == 200  # reads are not writes
        # The API's own pages (/docs) are same-origin; a script sends no Origin at all.
        for headers in ({"Origin": "http://testserver", "Sec-Fetch-Site": "same-origin"}, {}):
            assert client.post("/api/v1/runs", json=tiny_run(), headers=headers).status_code == 201
    with app_client(settings, allowed_hosts=["bench.example.com"]) as client:
        behind_proxy = {**auth, "Origin": "https://bench.example.com", "Host": "127.0.0.1:8000"}
        assert client.post("/api/v1/runs", json=tiny_run(), headers=behind_proxy).status_code == 201


def test_remote_clients_are_never_trusted(settings: Settings, db: Database) -> None:
    with app_client(settings, client_host="10.1.2.3") as client:
        assert client.post("/api/v1/runs", json=tiny_run()).status_code == 401
        assert client.get("/api/v1/runs").status_code == 401


def test_env_token_is_provisioned(settings: Settings, db: Database) -> None:
    with app_client(settings, api_token=SecretStr("vb_from-the-environment")) as client:
        headers = {"Authorization": "Bearer vb_from-the-environment"}
        assert client.post("/api/v1/runs", json=tiny_run(), headers=headers).status_code == 201
    with app_client(
        settings, api_token=SecretStr("vb_from-the-environment")
    ) as client:  # restart: no duplicate
        assert client.get("/api/v1/runs", headers=headers).status_code == 200
    with db.session() as session:
        assert [t.name for t in store.list_tokens(session)] == ["VELORA_API_TOKEN"]


def test_revoked_token_is_refused_within_the_cache_time(settings: Settings, db: Database) -> None:
    with db.write_session() as session:
        row, plain = store.create_token(session, name="short-lived")
    headers = {"Authorization": f"Bearer {plain}"}
    with app_client(settings, token_cache_s=0.5) as client:
        assert client.get("/api/v1/runs", headers=headers).status_code == 200
        with db.write_session() as session:
            assert store.revoke_token(session, token_id=row.id)
        time.sleep(0.6)
        assert client.get("/api/v1/runs", headers=headers).status_code == 401


def test_tokens_are_stored_hashed(db: Database, token: str) -> None:
    with db.session() as session:
        rows = session.execute(text("SELECT name, token_hash, prefix FROM api_tokens")).all()
    assert len(rows) == 1
    _name, token_hash, prefix = rows[0]
    assert token.startswith("vb_") and len(token) > 40
    assert token_hash == store.hash_token(token) and token not in token_hash
    assert prefix == token[:10]


def test_health_is_open_but_hides_worker_details(client: TestClient, auth: dict, db: Database) -> None:
    with db.write_session() as session:
        store.upsert_worker(session, name="gpu0@host", host="host", pid=1, queues="gpu", device="cuda:0")
    anonymous = client.get("/api/v1/health").json()
    assert anonymous["workers"] == {"alive": 1}
    detailed = client.get("/api/v1/health", headers=auth).json()
    assert [w["name"] for w in detailed["workers"]["list"]] == ["gpu0@host"]
