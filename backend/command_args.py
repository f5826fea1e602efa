"""What the service commands (``up``, ``token``, ``submit``) share: the ``--data-dir`` flag, the
settings it selects and the migrated database. Imported by ``backend.cli``, ``backend.up`` and
``backend.submit`` alike, so none of them imports another for it."""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # pragma: no cover
    from backend.db import Database
    from backend.settings import Settings

# The settings, database and migration modules are imported inside the functions, when a command
# runs: ``velora-bench`` loads these modules for every command (the ``velora_bench.commands``
# entry point), and an engine command must not pay for pydantic-settings, SQLAlchemy and Alembic.


def add_data_dir_argument(parser: argparse.ArgumentParser) -> None:
    """``--data-dir``, as every command that finds the embedded database or the token file has it."""
    parser.add_argument(
        "--data-dir",
        type=Path,
        default=None,
        help="embedded database, broker and artifacts (default $VELORA_DATA_DIR or ./.velora-bench)",
    )


def settings_from_args(args: argparse.Namespace) -> Settings:
    """Settings from the environment, with ``--data-dir`` applied (and exported to children)."""
    from backend.settings import Settings

    if getattr(args, "data_dir", None) is not None:
        os.environ["VELORA_DATA_DIR"] = str(Path(args.data_dir).expanduser().resolve())
    settings = Settings()
    os.environ["VELORA_DATA_DIR"] = str(settings.resolved_data_dir)
    return settings


def open_database(settings: Settings) -> Database:
    """The service's database, migrated to the newest schema."""
    from backend.db import Database
    from backend.migrate import upgrade

    db = Database(settings.sqlalchemy_url)
    upgrade(db)
    return db
