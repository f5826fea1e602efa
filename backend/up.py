"""``velora-bench up``: the API, a worker and the dashboard on this machine, kept running.

``up`` gives the local clients their token (``local_token``), starts the three processes, restarts a
worker that dies (with back-off, a bounded number of times) while the API and dashboard keep serving,
and on Ctrl-C or SIGTERM stops them all, failing or requeuing the runs the worker still held.
"""

from __future__ import annotations

import argparse
import contextlib
import ipaddress
import os
import shlex
import signal
import socket
import subprocess
import sys
import time
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx

from backend.command_args import open_database, settings_from_args
from backend.launcher import api_command, dashboard_app, dashboard_command, worker_command
from backend.submit import run_submit
from backend.token_file import TokenFile
from velora_core.contract.exit_codes import EXIT_BAD_INPUT, EXIT_FAILED, EXIT_OK
from velora_core.contract.http_api import API_PREFIX

# The store, the API app (for its token provisioning), the broker and the reaper are imported
# inside the functions that use them, when ``up`` runs: ``velora-bench`` loads this module for every
# command (through ``backend.cli``), and an engine command must not pay for FastAPI and Celery.


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
        self.stopped = False
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
        """Send ``sig``; after ``timeout`` seconds kill the child's whole process group (once: a
        group id is not signalled again after it may have been reused)."""
        if self.stopped:
            return
        self.stopped = True
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
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and child.alive():
        try:
            if httpx.get(url, timeout=2.0).status_code in (200, 503):
                return True
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    return False


UP_TOKEN_NAME = "velora-bench up"


def local_token(db: Any, settings: Any) -> tuple[str, str]:
    """The token this machine's clients present, and a shell expression for it (for the curl line).

    ``VELORA_API_TOKEN`` when configured (provisioned, hashed, as the API does). Otherwise the data
    dir's token file: created on the first start and provisioned on every start (so a new database
    accepts it too); a token that was revoked is replaced by a new one.
    """
    from backend import store
    from backend.api.main import provision_env_token

    if settings.api_token is not None and settings.api_token.get_secret_value():
        provision_env_token(db, settings)
        return settings.api_token.get_secret_value(), "$VELORA_API_TOKEN"
    token_file = TokenFile(settings.resolved_data_dir)
    token = token_file.read()
    with db.write_session() as session:
        if token is not None:
            try:
                store.add_token(session, name=UP_TOKEN_NAME, token=token)
            except store.StoreError:  # revoked: make a new one
                token = None
        if token is None:
            _, token = store.create_token(session, name=UP_TOKEN_NAME)
            token_file.write(token)
    return token, f"$(cat {shlex.quote(str(token_file.path))})"


def _bound_host_names(host: str) -> list[str]:
    """The names clients may use for an API bound to ``host``, beside the loopback names."""
    if _is_loopback(host):
        return []
    if host not in ("0.0.0.0", "::"):
        return [host.lower()]
    names = {socket.gethostname().lower(), socket.getfqdn().lower()}
    with contextlib.suppress(OSError):
        names |= {str(info[4][0]) for info in socket.getaddrinfo(socket.gethostname(), None)}
    return sorted(names)


class _Restarts:
    """When to restart a worker that died: after 1, 2, 4 … (at most 30) s, and at most
    ``max_restarts`` times within ``window_s`` seconds; after that, never."""

    def __init__(self, max_restarts: int, window_s: float) -> None:
        self.max_restarts, self.window_s = max_restarts, window_s
        self.crashes: deque[float] = deque()

    def delay_after_crash(self, now: float) -> float | None:
        """Record a crash at ``now``; the back-off before the restart, or None to give up."""
        self.crashes.append(now)
        while now - self.crashes[0] > self.window_s:
            self.crashes.popleft()
        if len(self.crashes) > self.max_restarts:
            return None
        return min(30.0, 2.0 ** (len(self.crashes) - 1))


class _WorkerKeeper:
    """The worker ``up`` runs, restarted when it dies. Each incarnation has its own Celery name, so
    /health shows the new one and the dead one's runs are released by name (failed or requeued)."""

    def __init__(
        self,
        start: Callable[[str], _Child],
        base_name: str,
        restarts: _Restarts,
        release: Callable[[str, str], None],
    ) -> None:
        self.start, self.base_name, self.restarts, self.release = start, base_name, restarts, release
        self.incarnation = 0
        self.name = self._name()
        self.child = start(self.name)
        self.restart_at: float | None = None
        self.gave_up = False

    def _name(self) -> str:
        suffix = f"r{self.incarnation}" if self.incarnation else ""
        return f"{self.base_name}{suffix}@{socket.gethostname()}"

    def check(self) -> bool:
        """Restart a dead worker once its back-off has passed; False once it gave up."""
        now = time.monotonic()
        if self.gave_up:
            return False
        if self.restart_at is not None:
            if now >= self.restart_at:
                self.incarnation += 1
                self.name = self._name()
                self.child = self.start(self.name)
                self.restart_at = None
                print(f"velora-bench up: worker restarted as {self.name}", file=sys.stderr, flush=True)
            return True
        if self.child.alive():
            return True
        code = self.child.process.returncode
        self.child.stop(0)  # and any pool process left in its group
        self.release(self.name, "(its worker process died)")
        delay = self.restarts.delay_after_crash(now)
        if delay is None:
            self.gave_up = True
            print(
                f"velora-bench up: error: the worker died {len(self.restarts.crashes)} times within "
                f"{self.restarts.window_s:g} s (last exit code {code}; see {self.child.log_path}); giving up "
                f"after {self.restarts.max_restarts} restart(s) (VELORA_WORKER_MAX_RESTARTS, "
                "VELORA_WORKER_RESTART_WINDOW_S); stopping",
                file=sys.stderr,
                flush=True,
            )
            return False
        print(
            f"velora-bench up: worker {self.name} exited with code {code} (see {self.child.log_path}); "
            f"restarting it in {delay:g} s (restart {len(self.restarts.crashes)} of at most "
            f"{self.restarts.max_restarts} within {self.restarts.window_s:g} s)",
            file=sys.stderr,
            flush=True,
        )
        self.restart_at = now + delay
        return True

    def stop(self, timeout: float) -> None:
        self.child.stop(timeout)
        self.release(self.name, "(stopped by `velora-bench up` shutting down)")


def cmd_up(args: argparse.Namespace) -> int:
    settings = settings_from_args(args)
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

    from backend.broker import Dispatcher

    settings.resolved_data_dir.mkdir(parents=True, exist_ok=True)
    db = open_database(settings)
    token, token_expression = local_token(db, settings)
    dispatcher = Dispatcher(settings)
    broker = dispatcher.check()  # also creates the embedded broker's tables before two processes race to
    dispatcher.close()
    if not broker["ok"]:
        print(
            f"velora-bench up: error: broker {broker['url']} unavailable: {broker['error']}", file=sys.stderr
        )
        return EXIT_FAILED

    env = dict(os.environ)
    logs = settings.resolved_data_dir / "logs"
    allowed_hosts = [*settings.allowed_hosts, *_bound_host_names(args.host)]
    children: list[_Child] = []
    keeper: _WorkerKeeper | None = None
    stop_requested: list[int] = []

    def start_worker(name: str) -> _Child:
        return _Child("worker", worker_command(name, args.queues), env, logs / "worker.log")

    def release(worker_name: str, reason: str) -> None:
        _release_runs(db, settings, worker_name, reason)

    def supervise() -> bool:
        """One look at the services: False when ``up`` must stop (the API or dashboard exited, or
        the worker died too often); a worker that died is restarted."""
        dead = [c for c in children if not c.alive()]
        for child in dead:
            print(
                f"velora-bench up: {child.name} exited with code {child.process.returncode} "
                f"(see {child.log_path}); stopping",
                file=sys.stderr,
            )
        return not dead and (keeper is None or keeper.check())

    def request_stop(signum: int, _frame: Any) -> None:
        stop_requested.append(signum)

    previous = {sig: signal.signal(sig, request_stop) for sig in (signal.SIGINT, signal.SIGTERM)}
    exit_code, finished = EXIT_OK, False
    try:
        api = _Child(
            "API",
            api_command(host=args.host, port=args.api_port),
            dict(env, VELORA_ALLOWED_HOSTS=",".join(allowed_hosts)),
            logs / "api.log",
        )
        children.append(api)
        if not args.no_worker:
            restarts = _Restarts(settings.worker_max_restarts, settings.worker_restart_window_s)
            keeper = _WorkerKeeper(start_worker, f"up{os.getpid()}", restarts, release)
        api_base = f"http://{'127.0.0.1' if args.host in ('0.0.0.0', '::') else args.host}:{args.api_port}"
        if app_path is not None:
            dash_env = dict(env, VELORA_API_URL=f"http://127.0.0.1:{args.api_port}", VELORA_API_TOKEN=token)
            dash_hosts = [*settings.allowed_hosts, *_bound_host_names(dashboard_host)]
            dash_env["VELORA_ALLOWED_HOSTS"] = ",".join(dash_hosts)  # the dashboard's Host check
            children.append(
                _Child(
                    "dashboard",
                    dashboard_command(app_path, host=dashboard_host, port=args.dashboard_port),
                    dash_env,
                    logs / "dashboard.log",
                )
            )
        if not _wait_for_api(f"http://127.0.0.1:{args.api_port}{API_PREFIX}/health", api):
            if not stop_requested:
                print(f"velora-bench up: error: the API did not start (see {api.log_path})", file=sys.stderr)
                exit_code = EXIT_FAILED
        else:
            print(f"VeLoRA Bench is up (data in {settings.resolved_data_dir})")
            print(f"  API:        {api_base}{API_PREFIX}   (docs: {api_base}/docs)")
            if app_path is not None:
                print(f"  Dashboard:  {dashboard_url}")
            if keeper is not None:
                print(f"  Worker:     {keeper.name} on queues {args.queues}")
            print(f"  Broker:     {broker['url']}")
            print(f"  Logs:       {logs}")
            print(f"  Token:      {token_expression}   (`velora-bench token show` prints it)")
            print(
                f'  Try:        curl -H "Authorization: Bearer {token_expression}" {api_base}{API_PREFIX}/runs'
            )
            if settings.trust_localhost:
                print("  Warning:    VELORA_TRUST_LOCALHOST=true: any process on this machine may write")
            print("Press Ctrl-C to stop.", flush=True)
            if args.submit:
                exit_code, finished = _submit_preset(
                    args, api_base, token, lambda: bool(stop_requested) or not supervise(), dashboard_url
                )
        while exit_code == EXIT_OK and not stop_requested and not finished:
            if not supervise():
                exit_code = EXIT_FAILED
                break
            time.sleep(0.25)
    finally:
        print("Stopping…", file=sys.stderr, flush=True)
        for child in reversed(children[1:]):  # the dashboard, then the worker, then the API
            child.stop(10.0)
        if keeper is not None:
            keeper.stop(args.stop_timeout)
        for child in children[:1]:
            child.stop(10.0)
        db.dispose()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    print("Stopped.", file=sys.stderr)
    return exit_code


def _submit_preset(
    args: argparse.Namespace,
    api_base: str,
    token: str,
    should_stop: Callable[[], bool],
    dashboard: str | None,
) -> tuple[int, bool]:
    """``submit --wait`` of ``args.submit`` against the stack just started: (exit code for ``up``, done)."""
    args.preset = args.submit
    code = run_submit(args, api_base, token, wait=True, dashboard_url=dashboard, should_stop=should_stop)
    if args.exit_when_done or should_stop():
        return code, True
    where = f"in the dashboard at {dashboard}" if dashboard else f"at {api_base}{API_PREFIX}/comparisons"
    print(f"Results are {where}. Press Ctrl-C to stop.", flush=True)
    return EXIT_OK, False


def _release_runs(db: Any, settings: Any, worker_name: str, reason: str) -> None:
    """Runs a worker that stopped or died still held are failed (or requeued), not left running."""
    from backend import store
    from backend.broker import Dispatcher
    from backend.reaper import dispatch_pending

    with db.write_session() as session:
        store.stop_worker(session, name=worker_name)
        outcome = store.release_worker_runs(
            session,
            worker_name=worker_name,
            reason=reason,
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
        print(f"Run {run_id} was still running and is requeued.", file=sys.stderr)
