"""The standard-library corpus: the running Python's ``.py`` files, split by a hash of their path."""

from __future__ import annotations

import hashlib
import platform
import sysconfig
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Literal

from velora_core.contract.hashing import short_hash, unit_hash

#: Share of standard-library files in ``stdlib-corpus`` validation (and ``stdlib-mc`` test).
STDLIB_VALIDATION_FRACTION = 0.05
#: Larger sources are generated tables (``pydoc_data/topics.py``) or outliers; they are skipped.
MAX_SOURCE_FILE_BYTES = 200_000
#: Directory names whose files are not part of the corpus: installed packages and test suites.
EXCLUDED_DIRS = frozenset({"site-packages", "dist-packages", "test", "tests", "idle_test", "__pycache__"})


@dataclass(frozen=True)
class SourceFile:
    """One ``.py`` file: ``path`` relative to the library root ('/'-separated), its text and SHA-256."""

    path: str
    text: str
    sha256: str


@dataclass(frozen=True)
class SourceCorpus:
    """The usable ``.py`` files under a root, sorted by path, and a fingerprint of all of them.

    ``fingerprint``: SHA-256 (16 hex digits) over the Python implementation and version, then each
    file's relative path and content hash in path order. Equal fingerprints mean identical sources.
    """

    root: str
    files: tuple[SourceFile, ...]
    fingerprint: str

    def split(self, name: Literal["train", "validation"]) -> tuple[SourceFile, ...]:
        """The files of one split, in path order."""
        return tuple(f for f in self.files if stdlib_split(f.path) == name)


def stdlib_split(path: str) -> Literal["train", "validation"]:
    """The corpus split of a file, from a hash of its relative path (stable across machines)."""
    return "validation" if unit_hash("split:" + path) < STDLIB_VALIDATION_FRACTION else "train"


@lru_cache(maxsize=4)
def source_corpus(root: str | None = None, max_file_bytes: int = MAX_SOURCE_FILE_BYTES) -> SourceCorpus:
    """Read the ``.py`` files under ``root`` (default: the running Python's standard library).

    Skips :data:`EXCLUDED_DIRS` (installed packages, test suites), files over ``max_file_bytes``
    and files that are not UTF-8. Cached per process: the engine and tests call it repeatedly.
    """
    base = Path(root or sysconfig.get_paths()["stdlib"])
    files = []
    for path in sorted(base.rglob("*.py")):
        relative = path.relative_to(base).as_posix()
        if EXCLUDED_DIRS.intersection(relative.split("/")[:-1]) or not path.is_file():
            continue
        data = path.read_bytes()
        if len(data) > max_file_bytes:
            continue
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError:
            continue
        files.append(SourceFile(relative, text, hashlib.sha256(data).hexdigest()))
    files.sort(key=lambda f: f.path)
    version = f"{platform.python_implementation()} {platform.python_version()}"
    fingerprint = short_hash(version, *(f"{f.path}:{f.sha256}" for f in files))
    return SourceCorpus(str(base), tuple(files), fingerprint)


def stdlib_documents(
    split: Literal["train", "validation"], max_bytes: int | None = None, root: str | None = None
) -> list[SourceFile]:
    """Files of one corpus split in a fixed shuffled order, up to ``max_bytes`` of UTF-8 in all.

    The order (by a hash of the path) mixes packages, so a byte budget takes a varied sample rather
    than the alphabetically first modules. At least one file is returned if the split has any.
    """
    files = sorted(source_corpus(root).split(split), key=lambda f: unit_hash("order:" + f.path))
    if max_bytes is None:
        return files
    chosen, total = [], 0
    for f in files:
        size = len(f.text.encode())
        if chosen and total + size > max_bytes:
            break
        chosen.append(f)
        total += size
    return chosen
