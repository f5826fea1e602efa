"""The names a spec may give a model or a dataset: a hub repository id, or a local path. No torch."""

from __future__ import annotations

import re
from pathlib import Path

#: The Hugging Face hub's repository id form (``huggingface_hub.utils.validate_repo_id``):
#: ``name`` or ``owner/name``, each 1-96 of ``[A-Za-z0-9_.-]``, not starting or ending with ``.``/``-``.
_HUB_ID = re.compile(r"(\b[\w\-.]{1,96}\b/)?\b[\w\-.]{1,96}\b", flags=re.ASCII)


def check_hub_id(name: str, field: str) -> str:
    """``name`` if it has the hub's repository id form, else a ValueError naming ``field``.

    A hub id must never be a path: ``from_pretrained`` and ``load_dataset`` would read a local
    folder of that name (``../../etc``) instead of the hub repository.
    """
    if not _HUB_ID.fullmatch(name) or "--" in name or ".." in name or name.endswith(".git"):
        raise ValueError(
            f"{field} {name[:200]!r} is not a hub id: use 'name' or 'owner/name' (letters, digits, "
            "'-', '_', '.', at most 96 each, no '..' or '--'); for a folder on disk use source='local'"
        )
    return name


def check_hub_id_not_on_disk(name: str, field: str) -> str:
    """``name`` unless a file or folder of that name exists where the process runs: ``from_pretrained``
    and ``load_dataset`` would read it instead of the hub repository (the API confines local paths,
    so a hub id must not become one by accident of the worker's working directory).

    Raises:
        ValueError: naming the field and the path found.
    """
    if Path(name).exists():
        raise ValueError(
            f"{field} {name!r} is a hub id, but {str(Path(name).resolve())!r} exists in the working "
            "directory and would be read instead of the hub repository; use source='local' for a folder "
            "on disk, or start the process from another directory"
        )
    return name


def check_local_path(name: str, field: str) -> str:
    """``name`` unless it holds a NUL character (no file system accepts one)."""
    if "\x00" in name:
        raise ValueError(f"{field} must not contain a NUL character")
    return name
