"""The API token ``velora-bench up`` keeps in its data dir, for the clients on this machine.

``up`` creates it when no ``VELORA_API_TOKEN`` is configured (as Jupyter creates its token), stores
it hashed in the database and in plain text in ``<data dir>/api-token`` with mode 0600 (readable
only by its owner), and hands it to the dashboard; ``velora-bench submit`` and
``velora-bench token show`` read it. This module is the only code that knows the file's name.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

FILE_NAME = "api-token"


class TokenFile:
    """``<data_dir>/api-token``: read it, or write it with mode 0600 (atomically)."""

    def __init__(self, data_dir: Path) -> None:
        self.path = Path(data_dir).expanduser().resolve() / FILE_NAME

    def read(self) -> str | None:
        """The stored token, or None if there is no (non-empty) file."""
        try:
            token = self.path.read_text(encoding="utf-8").strip()
        except (FileNotFoundError, NotADirectoryError):
            return None
        return token or None

    def write(self, token: str) -> Path:
        """Replace the file with ``token``; it is never readable by others, not even for a moment."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        partial = self.path.with_name(f".{FILE_NAME}.{os.getpid()}")
        fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            os.fchmod(fd, 0o600)  # O_CREAT's mode is reduced by the umask only, never widened
            os.write(fd, f"{token}\n".encode())
        finally:
            os.close(fd)
        try:
            os.replace(partial, self.path)
        except OSError:
            with contextlib.suppress(OSError):
                partial.unlink()
            raise
        return self.path
