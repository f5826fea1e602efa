"""Local paths in submitted specs: only under VELORA_LOCAL_ROOTS, only files and folders, bounded.

The in-process CLI reads whatever path its user gives (tests/bench/test_cli.py); the API reads
only what the server's operator allowed.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from backend.api.main import create_app
from backend.db import Database
from backend.settings import Settings
from tests.backend.conftest import tiny_comparison, tiny_run
from tests.backend.test_validation_api import messages, nothing_stored


@pytest.fixture
def datasets_dir(settings: Settings) -> Path:
    """The default root for datasets: <data_dir>/datasets."""
    folder = settings.resolved_data_dir / "datasets"
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def local_dataset_run(path: str | Path, **dataset: object) -> dict:
    return tiny_run(dataset={"source": "local", "name": str(path), **dataset})


def test_local_dataset_under_the_root_is_accepted(client: TestClient, auth: dict, datasets_dir: Path) -> None:
    data = datasets_dir / "notes.jsonl"
    data.write_text(json.dumps({"text": "hello"}) + "\n")
    (datasets_dir / "link.jsonl").symlink_to(data)  # a symlink that stays inside the root is fine
    for name in ("notes.jsonl", "link.jsonl"):
        response = client.post("/api/v1/runs", json=local_dataset_run(datasets_dir / name), headers=auth)
        assert response.status_code == 201, response.text


def test_hostile_local_paths_are_refused(
    client: TestClient, auth: dict, db: Database, datasets_dir: Path, tmp_path: Path
) -> None:
    outside = tmp_path / "outside.jsonl"
    outside.write_text(json.dumps({"text": "secret"}) + "\n")
    (datasets_dir / "escape.jsonl").symlink_to(outside)
    (datasets_dir / "zero.jsonl").symlink_to("/dev/zero")
    os.mkfifo(datasets_dir / "pipe.jsonl")
    (datasets_dir / "folder").mkdir()
    (datasets_dir / "folder" / "train.jsonl").symlink_to("/etc/passwd")
    cases = {
        "/dev/zero": "outside the folders this server reads",
        "/etc/passwd": "outside the folders this server reads",
        str(datasets_dir / "escape.jsonl"): "outside the folders this server reads",
        str(datasets_dir / "zero.jsonl"): "outside the folders this server reads",
        str(datasets_dir / "pipe.jsonl"): "neither a regular file nor a folder",
        str(datasets_dir / "folder"): "holds 'train.jsonl', which is not a regular file under the allowed",
        str(datasets_dir / "missing.jsonl"): "does not exist on this server",
        "datasets/notes.jsonl": "must be an absolute path",
    }
    for path, problem in cases.items():
        response = client.post("/api/v1/runs", json=local_dataset_run(path), headers=auth)
        assert response.status_code == 422, (path, response.text)
        detail = response.json()["detail"]
        assert detail[0]["loc"] == ["body", "dataset", "name"], path
        assert problem in messages(response), (path, messages(response))
        if "exist" not in problem and "neither" not in problem:
            assert "VELORA_LOCAL_ROOTS" in messages(response)
    assert nothing_stored(db)


def test_every_local_path_of_a_spec_is_checked(client: TestClient, auth: dict, datasets_dir: Path) -> None:
    good = datasets_dir / "train.jsonl"
    good.write_text(json.dumps({"text": "x"}) + "\n")
    # The evaluation file of a local dataset, the evaluation dataset, the pre-training run's data
    # and model folders: each is held to the same rules.
    run = local_dataset_run(good, eval_split="/etc/passwd")
    response = client.post("/api/v1/runs", json=run, headers=auth)
    assert response.status_code == 422 and response.json()["detail"][0]["loc"] == [
        "body",
        "dataset",
        "eval_split",
    ]

    run = tiny_run(eval={"dataset": {"source": "local", "name": "/etc/hostname"}})
    response = client.post("/api/v1/runs", json=run, headers=auth)
    assert response.status_code == 422
    assert response.json()["detail"][0]["loc"] == ["body", "eval", "dataset", "name"]

    pretrain = tiny_run(model={"source": "local", "name": "/etc"})
    body = tiny_comparison()
    body["base"].update(workload="finetune", model={"source": "artifact", "pretrain": pretrain})
    response = client.post("/api/v1/comparisons", json=body, headers=auth)
    assert response.status_code == 422
    assert response.json()["detail"][0]["loc"] == ["body", "base", "model", "pretrain", "model", "name"]
    assert "VELORA_LOCAL_ROOTS" in messages(response)


def test_local_model_must_be_a_folder(client: TestClient, auth: dict, settings: Settings) -> None:
    models = settings.resolved_data_dir / "models"
    models.mkdir(parents=True)
    (models / "weights.bin").write_bytes(b"x")
    (models / "tiny").mkdir()
    (models / "tiny" / "config.json").write_text("{}")
    run = tiny_run(workload="finetune", model={"source": "local", "name": str(models / "weights.bin")})
    response = client.post("/api/v1/runs", json=run, headers=auth)
    assert response.status_code == 422 and "must be a folder written by save_pretrained" in messages(response)
    run = tiny_run(workload="finetune", model={"source": "local", "name": str(models / "tiny")})
    assert client.post("/api/v1/runs", json=run, headers=auth).status_code == 201


def test_roots_and_size_bound_are_settings(
    settings: Settings, db: Database, auth: dict, tmp_path: Path
) -> None:
    elsewhere = tmp_path / "corpora"
    elsewhere.mkdir()
    big = elsewhere / "big.txt"
    big.write_text("x" * 5000)
    small = elsewhere / "small.txt"
    small.write_text("x" * 100)
    configured = settings.model_copy(update={"local_roots": [elsewhere], "max_dataset_bytes": 1000})
    with TestClient(create_app(configured)) as client:
        response = client.post("/api/v1/runs", json=local_dataset_run(big), headers=auth)
        assert response.status_code == 422
        assert "is 5000 bytes, over this server's limit of 1000 (VELORA_MAX_DATASET_BYTES)" in messages(
            response
        )
        assert client.post("/api/v1/runs", json=local_dataset_run(small), headers=auth).status_code == 201
        # The default roots no longer apply once roots are configured.
        default = settings.resolved_data_dir / "datasets"
        default.mkdir(parents=True, exist_ok=True)
        (default / "a.txt").write_text("x")
        response = client.post("/api/v1/runs", json=local_dataset_run(default / "a.txt"), headers=auth)
        assert response.status_code == 422 and str(elsewhere) in messages(response)


def test_local_roots_from_the_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("VELORA_LOCAL_ROOTS", f"{tmp_path / 'a'}{os.pathsep}{tmp_path / 'b'}")
    assert Settings(data_dir=tmp_path).resolved_local_roots == [tmp_path / "a", tmp_path / "b"]


@pytest.mark.parametrize(
    "name",
    ["../../etc", "/etc/passwd", "owner/name/extra", "a..b", "x" * 97, "owner/-bad", "name.git", "ca fé"],
)
def test_hub_ids_must_have_the_hub_form(client: TestClient, auth: dict, db: Database, name: str) -> None:
    for field in ("model", "dataset"):
        run = tiny_run(workload="finetune", model={"source": "hub", "name": "owner/model"})
        run[field] = {"source": "hub", "name": name}
        response = client.post("/api/v1/runs", json=run, headers=auth)
        assert response.status_code == 422, response.text
        assert "is not a hub id" in messages(response) and "source='local'" in messages(response)
    assert nothing_stored(db)
