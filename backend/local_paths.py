"""Local files a run of the service reads: where they may lie, checked when a spec is submitted (the
API, a 422) and again when a worker starts the run (a stored failure), so a file swapped for a symlink
after submission, or a dataset card naming files elsewhere, is never read.

A path must be absolute and, with symlinks followed, lie under ``VELORA_LOCAL_ROOTS``; it is a folder
(a model; a dataset laid out like a hub repository) or a regular file (a dataset), never a device or a
FIFO; a dataset is at most ``VELORA_MAX_DATASET_BYTES``. A folder's files are held to the same rules,
so a symlink inside cannot lead elsewhere, and a dataset folder's card (the YAML front matter of its
``README.md``, which ``datasets`` reads) may name only relative paths inside the folder in its
``data_files`` and ``data_dir``: no URL, no absolute path, no ``..``. Messages name the path as it was
submitted and the file names inside it, never where a symlink leads.

The in-process CLI (``velora-bench run``) reads any path its user gives; only the service checks.
"""

from __future__ import annotations

import os
import re
import stat
from collections.abc import Iterator
from pathlib import Path, PurePosixPath
from typing import Any, Literal

import yaml

from backend.settings import Settings
from velora_core.contract.spec import DatasetSpec, RunSpec

Loc = tuple[str | int, ...]
Kind = Literal["model", "dataset"]

#: The most files a local model or dataset folder may hold (also stops a walk in a symlink loop).
MAX_LOCAL_FOLDER_FILES = 10_000
#: The largest dataset card read for its front matter.
MAX_CARD_BYTES = 1024**2
_CARD_KEYS = ("data_files", "data_dir")
_URL = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*:|::")


def nested_runs(spec: RunSpec, loc: Loc) -> Iterator[tuple[RunSpec, Loc]]:
    """``spec`` and the pre-training run its model is made by (if any), with their locations."""
    yield spec, loc
    if spec.model.pretrain is not None:
        yield from nested_runs(spec.model.pretrain, (*loc, "model", "pretrain"))


def local_paths(spec: RunSpec) -> Iterator[tuple[Loc, str, Kind]]:
    """Every local path a run reads: its model folder, its dataset (and evaluation) files."""
    if spec.model.source == "local" and spec.model.name is not None:
        yield ("model", "name"), spec.model.name, "model"
    datasets: list[tuple[Loc, DatasetSpec | None]] = [
        (("dataset",), spec.dataset),
        (("eval", "dataset"), spec.eval.dataset),
    ]
    for loc, dataset in datasets:
        if dataset is None or dataset.source != "local":
            continue
        yield (*loc, "name"), dataset.name, "dataset"
        if dataset.eval_split is not None and not Path(dataset.name).is_dir():
            yield (*loc, "eval_split"), dataset.eval_split, "dataset"


def _folder_files(folder: Path) -> Iterator[Path]:
    count = 0
    for parent, _, files in os.walk(folder, followlinks=True):
        for name in files:
            count += 1
            if count > MAX_LOCAL_FOLDER_FILES:
                raise ValueError(f"holds more than {MAX_LOCAL_FOLDER_FILES} files")
            yield Path(parent, name)


def _card_entries(node: Any, inside: bool = False) -> Iterator[str]:
    """Every string under a ``data_files`` or ``data_dir`` key of a card's front matter."""
    if isinstance(node, dict):
        for key, value in node.items():
            yield from _card_entries(value, inside or key in _CARD_KEYS)
    elif isinstance(node, list):
        for value in node:
            yield from _card_entries(value, inside)
    elif inside and node is not None:
        yield str(node)


def card_problem(folder: Path) -> str | None:
    """Why the card of dataset ``folder`` names files this server will not read, or None."""
    card = folder / "README.md"
    if not card.is_file():
        return None
    with card.open("rb") as handle:
        text = handle.read(MAX_CARD_BYTES).decode("utf-8", errors="replace")
    match = re.match(r"---\s*\n(.*?)\n---\s*(\n|$)", text, flags=re.DOTALL)
    if match is None:
        return None
    try:
        front = yaml.safe_load(match.group(1))
    except yaml.YAMLError:
        return "has a README.md whose YAML front matter cannot be read"
    for entry in _card_entries(front):
        parts = PurePosixPath(entry.replace("\\", "/")).parts
        if _URL.search(entry) or entry.startswith(("/", "~")) or ".." in parts:
            return (
                f"has a README.md naming {entry[:100]!r} in data_files/data_dir: only relative paths "
                "inside the dataset folder are read (no URLs, absolute paths or '..')"
            )
    return None


def path_problem(text: str, kind: Kind, settings: Settings) -> str | None:
    """Why this server will not read ``text`` for a run it was sent, or None (module docstring)."""
    roots = settings.resolved_local_roots
    where = f"VELORA_LOCAL_ROOTS: {os.pathsep.join(str(r) for r in roots)}"
    path = Path(text)
    if not path.is_absolute():
        return f"must be an absolute path under one of the folders this server reads ({where})"
    try:
        resolved = path.resolve(strict=True)
        mode = resolved.stat().st_mode
    except (OSError, RuntimeError, ValueError):
        return f"does not exist on this server ({where})"

    def outside(p: Path) -> bool:
        return not any(p.is_relative_to(root) for root in roots)

    if outside(resolved):
        return f"lies outside the folders this server reads local files from ({where})"
    if stat.S_ISREG(mode):
        if kind == "model":
            return "must be a folder written by save_pretrained, not a file"
        size = resolved.stat().st_size
    elif stat.S_ISDIR(mode):
        size = 0
        try:
            for file in _folder_files(resolved):
                target = file.resolve(strict=True)
                if outside(target) or not stat.S_ISREG(target.stat().st_mode):
                    return f"holds {file.name!r}, which is not a regular file under the allowed folders ({where})"
                size += target.stat().st_size
        except ValueError as exc:
            return str(exc)
        except (OSError, RuntimeError):
            return f"holds a file that cannot be read ({where})"
        if kind == "dataset":
            problem = card_problem(resolved)
            if problem is not None:
                return problem
    else:
        return "is neither a regular file nor a folder (devices, FIFOs and sockets are refused)"
    if kind == "dataset" and size > settings.max_dataset_bytes:
        return f"is {size} bytes, over this server's limit of {settings.max_dataset_bytes} (VELORA_MAX_DATASET_BYTES)"
    return None


def local_path_problems(spec: RunSpec, settings: Settings) -> Iterator[tuple[Loc, str]]:
    """(field, message) for each local path of ``spec`` (not its pre-training run) this server will not read."""
    for field, text, kind in local_paths(spec):
        problem = path_problem(text, kind, settings)
        if problem is not None:
            yield field, f"{'.'.join(map(str, field))} {text[:300]!r} {problem}"


def run_path_problem(spec: RunSpec, settings: Settings) -> str | None:
    """The first problem with a local path of ``spec`` or its pre-training run, as one line; None if none."""
    for run, loc in nested_runs(spec, ()):
        for field, message in local_path_problems(run, settings):
            return f"{'.'.join(str(p) for p in (*loc, *field))}: {message}" if loc else message
    return None
