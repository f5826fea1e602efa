"""Service commands of the ``velora-bench`` CLI: ``up``, ``token`` and ``submit`` (in backend.submit).

Registered through the ``velora_bench.commands`` entry point (``backend.cli:register``); also runnable
alone as ``python -m backend.cli``. Heavy imports happen inside the commands, so loading this module
costs the engine commands nothing.
"""

from __future__ import annotations

import argparse
import contextlib
import ipaddress
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

EXIT_OK, EXIT_FAILED, EXIT_BAD_INPUT = 0, 1, 2


def register(subparsers: Any) -> None:
    """Add ``up``, ``token`` and ``submit`` to the ``velora-bench`` sub-command parsers."""
    from backend import submit

    up = subparsers.add_parser(
        "up",
        help="start the API, a worker and the dashboard on this machine",
        description="Start the REST API, one Celery worker and (if present) the dashboard on the embedded "
        "default (SQLite database and broker under --data-dir; DATABASE_URL / REDIS_URL are honoured). "
        "Ctrl-C or SIGTERM stops them all.",
    )
    _add_data_dir(up)
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

    token = subparsers.add_parser("token", help="create, list or revoke API tokens")
    actions = token.add_subparsers(dest="token_command", required=True, metavar="{create,list,revoke}")
    create = actions.add_parser("create", help="create a token and print it (once)")
    create.add_argument("--name", default="cli", help="a label for the token (default %(default)s)")
    _add_data_dir(create)
    create.set_defaults(func=cmd_token_create)
    listing = actions.add_parser("list", help="list tokens (never their values)")
    _add_data_dir(listing)
    listing.set_defaults(func=cmd_token_list)
    revoke = actions.add_parser("revoke", help="revoke a token by id")
    revoke.add_argument("token_id", type=int)
    _add_data_dir(revoke)
    revoke.set_defaults(func=cmd_token_revoke)


def _add_data_dir(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--data-dir",
        type=Path,
        default=None,
        help="embedded database, broker and artifacts (default $VELORA_DATA_DIR or ./.velora-bench)",
    )


def _settings(args: argparse.Namespace) -> Any:
    """Settings from the environment, with ``--data-dir`` applied (and exported to children)."""
    from backend.settings import Settings

    if getattr(args, "data_dir", None) is not None:
        os.environ["VELORA_DATA_DIR"] = str(Path(args.data_dir).expanduser().resolve())
    settings = Settings()
    os.environ["VELORA_DATA_DIR"] = str(settings.resolved_data_dir)
    return settings


def _database(settings: Any) -> Any:
    from backend.db import Database
    from backend.migrate import upgrade

    db = Database(settings.sqlalchemy_url)
    upgrade(db)
    return db


# --- token -------------------------------------------------------------------------------------


def cmd_token_create(args: argparse.Namespace) -> int:
    from backend import store

    db = _database(_settings(args))
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
    from backend import store

    db = _database(_settings(args))
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
    from backend import store

    db = _database(_settings(args))
    with db.write_session() as session:
        done = store.revoke_token(session, token_id=args.token_id)
    if not done:
        print(f"velora-bench: error: no active token with id {args.token_id}", file=sys.stderr)
        return EXIT_BAD_INPUT
    print(f"Token {args.token_id} revoked.")
    return EXIT_OK


# --- up ----------------------------------------------------------------------------------------


def _port_free(host: str, port: int) -> bool:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError:
            return False
    return True


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def dashboard_app() -> Path | None:
    """``dashboard/app.py`` of the installed package (or the working tree), if it exists."""
    import importlib.util

    candidates = []
    spec = importlib.util.find_spec("dashboard")
    if spec is not None and spec.submodule_search_locations:
        candidates += [Path(p) / "app.py" for p in spec.submodule_search_locations]
    candidates.append(Path.cwd() / "dashboard" / "app.py")
    return next((p for p in candidates if p.is_file()), None)


def _die_with_parent() -> None:
    # Linux: a child gets SIGTERM if `up` itself is killed, so nothing is left behind.
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except Exception:
        pass


class _Child:
    """A service process in its own session (so a terminal's Ctrl-C reaches only ``up``), logging to a file."""

    def __init__(self, name: str, argv: list[str], env: dict[str, str], log_path: Path) -> None:
        self.name, self.log_path = name, log_path
        log_path.parent.mkdir(parents=True, exist_ok=True)
        with log_path.open("ab") as log:
            self.process = subprocess.Popen(
                argv,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                preexec_fn=_die_with_parent,
            )

    def alive(self) -> bool:
        return self.process.poll() is None

    def stop(self, timeout: float, *, sig: int = signal.SIGTERM) -> None:
        """Send ``sig``; after ``timeout`` seconds kill the child's whole process group."""
        if self.alive():
            self.process.send_signal(sig)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                print(
                    f"velora-bench up: {self.name} did not stop in {timeout:g} s; killing it", file=sys.stderr
                )
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.process.pid, signal.SIGKILL)  # also any pool process left in its group
        self.process.wait()


def _wait_for_api(url: str, child: _Child, timeout_s: float = 60.0) -> bool:
    import httpx

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and child.alive():
        try:
            if httpx.get(url, timeout=2.0).status_code in (200, 503):
                return True
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    return False


def cmd_up(args: argparse.Namespace) -> int:
    settings = _settings(args)
    dashboard_host = args.dashboard_host or (args.host if _is_loopback(args.host) else "127.0.0.1")
    ports = [("API", args.api_port)]
    app_path = None if args.no_dashboard else dashboard_app()
    dashboard_url = f"http://{dashboard_host}:{args.dashboard_port}" if app_path is not None else None
    if app_path is not None:
        ports.append(("dashboard", args.dashboard_port))
    for label, port in ports:
        if not _port_free(args.host if label == "API" else dashboard_host, port):
            flag = "--api-port" if label == "API" else "--dashboard-port"
            print(
                f"velora-bench up: error: port {port} on "
                f"{args.host if label == 'API' else dashboard_host} is in use; choose another with {flag}",
                file=sys.stderr,
            )
            return EXIT_BAD_INPUT

    from backend import store
    from backend.api.main import provision_env_token
    from backend.broker import Dispatcher

    settings.resolved_data_dir.mkdir(parents=True, exist_ok=True)
    db = _database(settings)
    provision_env_token(db, settings)
    if not _is_loopback(args.host):
        with db.write_session() as session:
            if store.count_active_tokens(session) == 0:
                _, plain = store.create_token(session, name="velora-bench up")
                print(
                    f"The API listens on {args.host}, so it needs a token from other machines. "
                    f"Created one (shown once):\n  {plain}"
                )
    dispatcher = Dispatcher(settings)
    broker = dispatcher.check()  # also creates the embedded broker's tables before two processes race to
    dispatcher.close()
    if not broker["ok"]:
        print(
            f"velora-bench up: error: broker {broker['url']} unavailable: {broker['error']}", file=sys.stderr
        )
        return EXIT_FAILED

    env = dict(os.environ)
    python = sys.executable
    logs = settings.resolved_data_dir / "logs"
    worker_name = f"up{os.getpid()}@{socket.gethostname()}"
    children: list[_Child] = []
    stop_requested: list[int] = []

    def request_stop(signum: int, _frame: Any) -> None:
        stop_requested.append(signum)

    previous = {sig: signal.signal(sig, request_stop) for sig in (signal.SIGINT, signal.SIGTERM)}
    exit_code, finished = EXIT_OK, False
    try:
        api = _Child(
            "API",
            [
                python,
                "-m",
                "uvicorn",
                "backend.api.main:create_app",
                "--factory",
                "--host",
                args.host,
                "--port",
                str(args.api_port),
                "--log-level",
                "warning",
            ],
            env,
            logs / "api.log",
        )
        children.append(api)
        if not args.no_worker:
            children.append(
                _Child(
                    "worker",
                    [
                        python,
                        "-m",
                        "celery",
                        "-A",
                        "worker.app",
                        "worker",
                        "-Q",
                        args.queues,
                        "-c",
                        "1",
                        "-n",
                        worker_name,
                        "--loglevel",
                        "INFO",
                    ],
                    env,
                    logs / "worker.log",
                )
            )
        api_base = f"http://{'127.0.0.1' if args.host in ('0.0.0.0', '::') else args.host}:{args.api_port}"
        if app_path is not None:
            dash_env = dict(env, VELORA_API_URL=f"http://127.0.0.1:{args.api_port}")
            children.append(
                _Child(
                    "dashboard",
                    [
                        python,
                        "-m",
                        "streamlit",
                        "run",
                        str(app_path),
                        "--server.port",
                        str(args.dashboard_port),
                        "--server.address",
                        dashboard_host,
                        "--server.headless",
                        "true",
                        "--browser.gatherUsageStats",
                        "false",
                        "--client.toolbarMode",
                        "viewer",  # as docker-compose.yml: no "Deploy" button
                    ],
                    dash_env,
                    logs / "dashboard.log",
                )
            )
        if not _wait_for_api(f"http://127.0.0.1:{args.api_port}/api/v1/health", api):
            if not stop_requested:
                print(f"velora-bench up: error: the API did not start (see {api.log_path})", file=sys.stderr)
                exit_code = EXIT_FAILED
        else:
            print(f"VeLoRA Bench is up (data in {settings.resolved_data_dir})")
            print(f"  API:        {api_base}/api/v1   (docs: {api_base}/docs)")
            if app_path is not None:
                print(f"  Dashboard:  {dashboard_url}")
            if not args.no_worker:
                print(f"  Worker:     {worker_name} on queues {args.queues}")
            print(f"  Broker:     {broker['url']}")
            print(f"  Logs:       {logs}")
            print("Press Ctrl-C to stop.", flush=True)
            if args.submit:
                exit_code, finished = _submit_preset(args, api_base, children, stop_requested, dashboard_url)
        while exit_code == EXIT_OK and not stop_requested and not finished:
            dead = [c for c in children if not c.alive()]
            if dead:
                for child in dead:
                    print(
                        f"velora-bench up: {child.name} exited with code {child.process.returncode} "
                        f"(see {child.log_path}); stopping",
                        file=sys.stderr,
                    )
                exit_code = EXIT_FAILED
                break
            time.sleep(0.25)
    finally:
        print("Stopping…", file=sys.stderr, flush=True)
        for child in reversed(children):
            child.stop(args.stop_timeout if child.name == "worker" else 10.0)
        if not args.no_worker:
            _release_runs(db, settings, worker_name)
        db.dispose()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    print("Stopped.", file=sys.stderr)
    return exit_code


def _submit_preset(
    args: argparse.Namespace,
    api_base: str,
    children: list[_Child],
    stop_requested: list[int],
    dashboard: str | None,
) -> tuple[int, bool]:
    """``submit --wait`` of ``args.submit`` against the stack just started: (exit code for ``up``, done)."""
    from backend.submit import run_submit

    args.preset = args.submit
    code = run_submit(
        args,
        api_base,
        os.environ.get("VELORA_API_TOKEN"),
        wait=True,
        dashboard_url=dashboard,
        should_stop=lambda: bool(stop_requested) or not all(c.alive() for c in children),
    )
    if args.exit_when_done or stop_requested:
        return code, True
    where = f"in the dashboard at {dashboard}" if dashboard else f"at {api_base}/api/v1/comparisons"
    print(f"Results are {where}. Press Ctrl-C to stop.", flush=True)
    return EXIT_OK, False


def _release_runs(db: Any, settings: Any, worker_name: str) -> None:
    """Runs the stopped worker still held are failed (or requeued), not left running."""
    from backend import store
    from backend.broker import Dispatcher
    from backend.reaper import dispatch_pending

    with db.write_session() as session:
        store.stop_worker(session, name=worker_name)
        outcome = store.release_worker_runs(
            session,
            worker_name=worker_name,
            reason="(stopped by `velora-bench up` shutting down)",
            requeue=settings.requeue_lost_runs,
            max_attempts=settings.max_attempts,
        )
    if outcome.requeued:
        dispatcher = Dispatcher(settings)
        dispatch_pending(db, dispatcher, settings)
        dispatcher.close()
    for run_id in outcome.failed:
        print(f"Run {run_id} was still running and is marked failed.", file=sys.stderr)
    for run_id in outcome.requeued:
        print(f"Run {run_id} was still running and is requeued for the next start.", file=sys.stderr)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m backend.cli", description="VeLoRA Bench service commands"
    )
    register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
