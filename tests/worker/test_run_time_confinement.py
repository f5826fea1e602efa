"""Local paths stay confined when a run starts, not only when it is submitted (issue 22.4): a dataset
file swapped for a symlink after submission, and a dataset card naming a file outside the roots,
were read by the worker (the outside file's field names appeared in the run's error)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.worker.conftest import long_run, stack

SECRET_FIELD = "outside_secret_field"


def _outside_file(tmp_path: Path) -> Path:
    outside = tmp_path / "outside" / "secret.jsonl"
    outside.parent.mkdir()
    outside.write_text(json.dumps({SECRET_FIELD: "x"}) + "\n")
    return outside


def _local_run(path: Path) -> dict:
    return long_run(steps=2, dataset={"source": "local", "name": str(path)})


def test_a_dataset_card_cannot_name_files_outside_the_roots(tmp_path: Path) -> None:
    outside = _outside_file(tmp_path)
    with stack("sqlite", tmp_path) as services:
        folder = tmp_path / "data" / "datasets" / "hub-shaped"
        folder.mkdir(parents=True)
        (folder / "train.jsonl").write_text(json.dumps({"text": "inside"}) + "\n")
        for entry in (str(outside), "../../outside/secret.jsonl", "https://example.com/x.jsonl", "hf://a/b"):
            card = f"---\nconfigs:\n- config_name: default\n  data_files:\n  - split: train\n    path: {entry}\n---\n"
            (folder / "README.md").write_text(card)
            response = services.client.post("/api/v1/runs", json=_local_run(folder))
            assert response.status_code == 422, (entry, response.text)
            assert "only relative paths inside the dataset folder" in response.text
            assert SECRET_FIELD not in response.text
        (folder / "README.md").write_text(
            "---\nconfigs:\n- config_name: default\n  data_files: train.jsonl\n---\n"
        )
        assert services.client.post("/api/v1/runs", json=_local_run(folder)).status_code == 201


@pytest.mark.usefixtures("engine_available")
def test_a_file_swapped_for_a_symlink_after_submission_is_not_read(tmp_path: Path) -> None:
    outside = _outside_file(tmp_path)
    with stack("sqlite", tmp_path) as services:
        data = tmp_path / "data" / "datasets" / "notes.jsonl"
        data.parent.mkdir(parents=True)
        data.write_text(json.dumps({"text": "inside"}) + "\n")
        response = services.client.post("/api/v1/runs", json=_local_run(data))
        assert response.status_code == 201, response.text
        run_id = response.json()["id"]
        data.unlink()
        data.symlink_to(outside)  # after the API checked it, before a worker reads it
        services.worker()
        run = services.wait_run(
            run_id, lambda r: r["status"] == "failed", timeout=120, what="was not refused"
        )
        assert "refused when the run started" in run["error"] and "lies outside the folders" in run["error"]
        assert SECRET_FIELD not in run["error"] and str(outside) not in run["error"]
