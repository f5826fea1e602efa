"""Service commands of the ``velora-bench`` CLI: ``token``, and the parsers of ``up`` (backend.up) and
``submit`` (backend.submit).

Registered through the ``velora_bench.commands`` entry point (``backend.cli:register``); also runnable
alone as ``python -m backend.cli``. The flags and helpers the three commands share are in
``backend.command_args``. ``velora-bench`` loads this module for every command, so the store and the
database are imported inside the token commands, when they run.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from typing import Any

from backend import submit
from backend.command_args import add_data_dir_argument, open_database, settings_from_args
from backend.token_file import TokenFile
from backend.up import cmd_up
from velora_core.contract.exit_codes import EXIT_BAD_INPUT, EXIT_OK


def register(subparsers: Any) -> None:
    """Add ``up``, ``token`` and ``submit`` to the ``velora-bench`` sub-command parsers."""
    up = subparsers.add_parser(
        "up",
        help="start the API, a worker and the dashboard on this machine",
        description="Start the REST API, one Celery worker and (if present) the dashboard on the embedded "
        "default (SQLite database and broker under --data-dir; DATABASE_URL / REDIS_URL are honoured). "
        "Ctrl-C or SIGTERM stops them all.",
    )
    add_data_dir_argument(up)
    up.add_argument("--host", default="127.0.0.1", help="interface to listen on (default %(default)s)")
    up.add_argument("--api-port", type=int, default=8000, help="(default %(default)s)")
    up.add_argument("--dashboard-port", type=int, default=8501, help="(default %(default)s)")
    up.add_argument(
        "--dashboard-host",
        help="interface for the dashboard (default: --host if that is loopback, else 127.0.0.1, because the "
        "dashboard has no login of its own and acts with the API's trust in localhost)",
    )
    up.add_argument("--no-dashboard", action="store_true", help="do not start the dashboard")
    up.add_argument("--no-worker", action="store_true", help="do not start a worker (they run elsewhere)")
    up.add_argument("--queues", default="gpu,cpu", help="queues the worker consumes (default %(default)s)")
    up.add_argument(
        "--stop-timeout",
        type=float,
        default=10.0,
        help="seconds a running run gets to stop before the worker is killed (default %(default)s)",
    )
    up.add_argument(
        "--submit", metavar="PRESET", help="once up, queue this preset and follow it (as submit --wait)"
    )
    submit.add_request_arguments(up, preset_flag=None)
    up.add_argument("--out", help="with --submit: folder for comparison.json and comparison.csv")
    up.add_argument(
        "--exit-when-done", action="store_true", help="with --submit: stop everything and exit with its code"
    )
    up.set_defaults(func=cmd_up)
    submit.register(subparsers)

    token = subparsers.add_parser("token", help="show the local API token; create, list or revoke tokens")
    actions = token.add_subparsers(dest="token_command", required=True, metavar="{show,create,list,revoke}")
    show = actions.add_parser(
        "show", help="print the token `velora-bench up` keeps in the data dir (for curl and scripts)"
    )
    add_data_dir_argument(show)
    show.set_defaults(func=cmd_token_show)
    create = actions.add_parser("create", help="create a token and print it (once)")
    create.add_argument("--name", default="cli", help="a label for the token (default %(default)s)")
    add_data_dir_argument(create)
    create.set_defaults(func=cmd_token_create)
    listing = actions.add_parser("list", help="list tokens (never their values)")
    add_data_dir_argument(listing)
    listing.set_defaults(func=cmd_token_list)
    revoke = actions.add_parser("revoke", help="revoke a token by id")
    revoke.add_argument("token_id", type=int)
    add_data_dir_argument(revoke)
    revoke.set_defaults(func=cmd_token_revoke)


# --- token -------------------------------------------------------------------------------------


def cmd_token_show(args: argparse.Namespace) -> int:
    token_file = TokenFile(settings_from_args(args).resolved_data_dir)
    token = token_file.read()
    if token is None:
        print(
            f"velora-bench: error: no token in {token_file.path}: `velora-bench up` creates it when "
            "VELORA_API_TOKEN is not set (or create one with `velora-bench token create`)",
            file=sys.stderr,
        )
        return EXIT_BAD_INPUT
    print(token)
    return EXIT_OK


def cmd_token_create(args: argparse.Namespace) -> int:
    from backend import store  # when the command runs: see the module docstring

    db = open_database(settings_from_args(args))
    with db.write_session() as session:
        row, plain = store.create_token(session, name=args.name)
        token_id = row.id
    print(plain)
    print(
        f"Token {token_id} ({args.name!r}) created. It is shown only this once; send it as "
        "`Authorization: Bearer <token>`.",
        file=sys.stderr,
    )
    return EXIT_OK


def cmd_token_list(args: argparse.Namespace) -> int:
    from backend import store  # when the command runs: see the module docstring

    db = open_database(settings_from_args(args))
    with db.session() as session:
        rows = store.list_tokens(session)
        print(f"{'id':>4}  {'name':<24} {'prefix':<12} {'created':<20} {'last used':<20} state")
        for t in rows:
            state = "revoked" if t.revoked_at else "active"
            used = t.last_used_at.strftime("%Y-%m-%d %H:%M:%S") if t.last_used_at else "-"
            print(
                f"{t.id:>4}  {t.name:<24} {t.prefix + '…':<12} {t.created_at:%Y-%m-%d %H:%M:%S}  {used:<20} {state}"
            )
    return EXIT_OK


def cmd_token_revoke(args: argparse.Namespace) -> int:
    from backend import store  # when the command runs: see the module docstring

    db = open_database(settings_from_args(args))
    with db.write_session() as session:
        done = store.revoke_token(session, token_id=args.token_id)
    if not done:
        print(f"velora-bench: error: no active token with id {args.token_id}", file=sys.stderr)
        return EXIT_BAD_INPUT
    print(f"Token {args.token_id} revoked.")
    return EXIT_OK


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m backend.cli", description="VeLoRA Bench service commands"
    )
    register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
