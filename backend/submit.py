"""``velora-bench submit``: queue a comparison through the REST API, follow it, print the table.

A plain HTTP client (httpx): it works against any VeLoRA Bench API, local or remote, and is what
``velora-bench up --submit PRESET`` runs once the stack is healthy. Exit codes: 0 when every run
completed (or ran out of memory, which is a result), 1 otherwise, 2 for bad input or an API 4xx.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
from rich.progress import Progress

from backend.command_args import add_data_dir_argument
from backend.settings import Settings
from backend.token_file import TokenFile
from velora_core.cli.spec_input import BadInput, load_spec_file, parse_assignments
from velora_core.cli.table_output import base_run_line, print_table, progress_columns
from velora_core.contract.exit_codes import EXIT_BAD_INPUT, EXIT_FAILED, EXIT_OK
from velora_core.contract.http_api import API_PREFIX, detail_text
from velora_core.contract.plan import ROLE_BASE, ROLE_METHOD
from velora_core.contract.result import ANSWERED_RUN_STATUSES, FINISHED_RUN_STATUSES, RunResult, RunStatus
from velora_core.contract.spec import ComparisonSpec
from velora_core.contract.table import MethodRow, write_outputs


class SubmitError(Exception):
    """A problem to print as one line; ``exit_code`` says whose fault it was."""

    def __init__(self, message: str, exit_code: int = EXIT_BAD_INPUT) -> None:
        super().__init__(message)
        self.exit_code = exit_code


def add_request_arguments(parser: argparse.ArgumentParser, *, preset_flag: str | None = "--preset") -> None:
    """``--set``, ``--methods``, ``--seeds`` (and ``--preset`` / ``--spec`` unless ``preset_flag`` is None)."""
    if preset_flag:
        source = parser.add_mutually_exclusive_group(required=True)
        source.add_argument(
            preset_flag, dest="preset", help="a comparison preset (see `velora-bench presets`)"
        )
        source.add_argument("--spec", type=Path, help="a ComparisonSpec file (YAML or JSON)")
    parser.add_argument(
        "--set",
        action="append",
        metavar="KEY=VALUE",
        help="override a preset field, e.g. steps=50 or pretrain.steps=100",
    )
    parser.add_argument("--methods", nargs="+", help="subset of the preset's methods")
    parser.add_argument("--seeds", nargs="+", type=int, help="seeds (default: the preset's)")


def register(subparsers: Any) -> None:
    """Add ``submit`` to the ``velora-bench`` sub-command parsers."""
    submit = subparsers.add_parser(
        "submit",
        help="queue a comparison on a running VeLoRA Bench API and (with --wait) follow it",
        description="POST a preset (with overrides) or a ComparisonSpec file to the API's /comparisons. "
        "Exit code 0 when every run completed (or ran out of memory), 1 otherwise, 2 for bad input.",
    )
    add_request_arguments(submit)
    submit.add_argument(
        "--api",
        default=os.environ.get("VELORA_API_URL", "http://127.0.0.1:8000"),
        help="the API's base URL (default $VELORA_API_URL or %(default)s)",
    )
    submit.add_argument(
        "--token",
        help="API token (default $VELORA_API_TOKEN, else the token `velora-bench up` keeps in the data dir)",
    )
    add_data_dir_argument(submit)
    submit.add_argument(
        "--dashboard",
        default=os.environ.get("VELORA_DASHBOARD_URL", "http://127.0.0.1:8501"),
        help="the dashboard's URL, for the printed link (default $VELORA_DASHBOARD_URL or %(default)s)",
    )
    submit.add_argument("--wait", action="store_true", help="follow the runs and print the final table")
    submit.add_argument("--out", help="with --wait: folder for comparison.json and comparison.csv")
    submit.set_defaults(func=cmd_submit)


def request_body(args: argparse.Namespace) -> dict[str, Any]:
    """The POST /comparisons body from ``--preset``/``--set``/``--methods``/``--seeds`` or ``--spec``.

    Raises:
        SubmitError: a malformed ``--set``, or a spec file that is missing or invalid.
    """
    try:
        if getattr(args, "spec", None) is not None:
            if args.set or args.methods or args.seeds:
                raise SubmitError("--set, --methods and --seeds go with --preset, not --spec")
            spec = load_spec_file(str(args.spec))
            if not isinstance(spec, ComparisonSpec):
                raise SubmitError(f"{args.spec}: a ComparisonSpec (with base and methods) is needed")
            return spec.model_dump(mode="json")
        overrides = parse_assignments(args.set or [])
    except BadInput as exc:
        raise SubmitError(str(exc)) from None
    if args.methods:
        overrides["methods"] = args.methods
    if args.seeds:
        overrides["seeds"] = args.seeds
    return {"preset": args.preset, "overrides": overrides or None}


def api_message(response: httpx.Response) -> str:
    """The API's error as one line (a 422's field errors joined)."""
    try:
        body = response.json()
    except ValueError:
        body = None
    detail = detail_text(body.get("detail")) if isinstance(body, dict) else None
    text = detail or " ".join((response.text or response.reason_phrase).split())
    return f"API {response.status_code}: {text}"


class ApiClient:
    """The few API calls ``submit`` makes; HTTP errors become :class:`SubmitError`."""

    def __init__(self, base_url: str, token: str | None, timeout: float = 30.0) -> None:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self.http = httpx.Client(base_url=base_url.rstrip("/") + API_PREFIX, headers=headers, timeout=timeout)

    def close(self) -> None:
        self.http.close()

    def _call(self, method: str, path: str, **kwargs: Any) -> Any:
        try:
            response = self.http.request(method, path, **kwargs)
        except httpx.TransportError as exc:
            raise SubmitError(f"cannot reach the API at {self.http.base_url}: {exc}", EXIT_FAILED) from None
        if 400 <= response.status_code < 500:
            raise SubmitError(api_message(response), EXIT_BAD_INPUT)
        if response.status_code >= 500:
            raise SubmitError(api_message(response), EXIT_FAILED)
        return response.json()

    def create_comparison(self, body: dict[str, Any], attempts: int = 3) -> dict[str, Any]:
        """POST /comparisons; a transport failure is retried with the same Idempotency-Key, so the
        comparison is queued once however often the request is sent."""
        headers = {"Idempotency-Key": f"velora-bench-submit-{uuid.uuid4()}"}
        for attempt in range(attempts):
            try:
                return self._call("POST", "/comparisons", json=body, headers=headers)
            except SubmitError as exc:
                if exc.exit_code != EXIT_FAILED or attempt == attempts - 1:
                    raise
                time.sleep(1.0 + attempt)
        raise AssertionError("unreachable")

    def comparison(self, comparison_id: int) -> dict[str, Any]:
        return self._call("GET", f"/comparisons/{comparison_id}")

    def run(self, run_id: int) -> dict[str, Any]:
        return self._call("GET", f"/runs/{run_id}")

    def last_loss(self, run_id: int, after_step: int) -> tuple[float | None, int]:
        """The newest loss after ``after_step`` (None if none yet) and the step to ask after next."""
        body = self._call("GET", f"/runs/{run_id}/metrics", params={"after_step": after_step})
        losses = [p["loss"] for p in body["data"] if p.get("loss") is not None]
        return (losses[-1] if losses else None), body["last_step"]


def follow(
    client: ApiClient,
    comparison: dict[str, Any],
    *,
    poll_s: float = 1.0,
    should_stop: Callable[[], bool] = lambda: False,
) -> dict[str, Any] | None:
    """Show a progress bar per run until every run has finished; the final comparison, or None if
    ``should_stop`` said so first."""
    columns = progress_columns()
    tasks: dict[int, Any] = {}
    loss: dict[int, tuple[float | None, int]] = {}
    with Progress(*columns, transient=False) as progress:
        progress.console.print(f"[bold]{comparison['name']}[/]: {len(comparison['runs'])} run(s)")
        while True:
            for run in comparison["runs"]:
                run_id, status = run["id"], run["status"]
                if run_id not in tasks:
                    label = (
                        f"base: pre-train {run['method']}"
                        if run["role"] == ROLE_BASE
                        else f"{run['method']} (seed {run['seed']})"
                    )
                    tasks[run_id] = progress.add_task(label, total=None, info=status)
                finished = status in FINISHED_RUN_STATUSES
                total = run["total_steps"] or (run["step"] if finished else 0)
                info = status if finished else f"{run['phase'] or status} {run['message'] or ''}".strip()
                if status == RunStatus.RUNNING and run["phase"] == "train":
                    last, after = loss.get(run_id, (None, 0))
                    newest, after = client.last_loss(run_id, after)
                    loss[run_id] = (newest if newest is not None else last, after)
                    if loss[run_id][0] is not None:
                        info = f"{run['phase']} loss {loss[run_id][0]:.3f}"
                progress.update(
                    tasks[run_id],
                    total=total or None,
                    completed=run["step"] if not finished else (total or run["step"]),
                    info=info
                    if status in ANSWERED_RUN_STATUSES or not run["error"]
                    else f"{status}: {run['error']}",
                )
            if all(run["status"] in FINISHED_RUN_STATUSES for run in comparison["runs"]):
                return comparison
            deadline = time.monotonic() + poll_s
            while time.monotonic() < deadline:
                if should_stop():
                    return None
                time.sleep(0.1)
            comparison = client.comparison(comparison["id"])


def results_of(client: ApiClient, comparison: dict[str, Any], role: str = ROLE_METHOD) -> list[Any]:
    """A RunResult per run of ``role`` (``GET /runs/{id}``): the comparison's own runs, or with
    ``role='base'`` its base runs; a run that stored no result gets one from its status."""
    results = []
    for public in (run for run in comparison["runs"] if run["role"] == role):
        run = client.run(public["id"])
        if run.get("result"):
            result = RunResult.model_validate(run["result"])
        else:
            result = RunResult(method=run["method"], status=run["status"], error=run["error"])
        if result.spec is None:
            result = result.model_copy(update={"spec": run["spec"]})
        results.append(result)
    return results


def submit_and_follow(
    client: ApiClient,
    body: dict[str, Any],
    *,
    wait: bool,
    out: str | None = None,
    dashboard_url: str | None = None,
    should_stop: Callable[[], bool] = lambda: False,
) -> int:
    """Queue ``body``, print where to watch it; with ``wait``, follow it and print the table.

    Raises:
        SubmitError: the API refused the request or could not be reached.
    """
    comparison = client.create_comparison(body)
    comparison_id = comparison["id"]
    bases = sum(run["role"] == ROLE_BASE for run in comparison["runs"])
    extra = f", after {bases} base run(s) that pre-train their model" if bases else ""
    print(
        f"Comparison {comparison_id} ({comparison['name']}) queued: "
        f"{len(comparison['run_ids']) - bases} run(s){extra}"
    )
    print(f"  API:        {str(client.http.base_url).rstrip('/')}/comparisons/{comparison_id}")
    if dashboard_url:
        print(f"  Dashboard:  {dashboard_url.rstrip('/')}/compare?comparison={comparison_id}", flush=True)
    if not wait:
        return EXIT_OK
    final = follow(client, comparison, should_stop=should_stop)
    if final is None:
        print(f"Stopped following comparison {comparison_id}.", file=sys.stderr)
        return EXIT_FAILED
    counts = ", ".join(f"{n} {status}" for status, n in final["status_counts"].items())
    print(f"Comparison {comparison_id}: {final['status']} ({counts})")
    for base in results_of(client, final, ROLE_BASE):
        print(base_run_line(base))
    results = results_of(client, final)
    rows = [MethodRow.model_validate(row) for row in final["table"]]  # as the API computed it
    print_table(rows)
    if out:
        json_path, csv_path = write_outputs(results, out, rows)
        print(f"wrote {json_path} and {csv_path}")
    return EXIT_OK if all(r.status in ANSWERED_RUN_STATUSES for r in results) else EXIT_FAILED


def run_submit(
    args: argparse.Namespace,
    api_url: str,
    token: str | None,
    *,
    wait: bool,
    dashboard_url: str | None,
    should_stop: Callable[[], bool] = lambda: False,
) -> int:
    """Build the request from ``args``, submit it and report; errors are one line on stderr."""
    client = None
    try:
        body = request_body(args)
        client = ApiClient(api_url, token)
        return submit_and_follow(
            client,
            body,
            wait=wait,
            out=getattr(args, "out", None),
            dashboard_url=dashboard_url,
            should_stop=should_stop,
        )
    except SubmitError as exc:
        print(f"velora-bench: error: {exc}", file=sys.stderr)
        return exc.exit_code
    finally:
        if client is not None:
            client.close()


def client_token(args: argparse.Namespace) -> str | None:
    """The token to present: ``--token``, else ``$VELORA_API_TOKEN``, else the data dir's token file
    (``--data-dir``, else ``$VELORA_DATA_DIR``, else ./.velora-bench), which ``velora-bench up`` writes."""
    if args.token or os.environ.get("VELORA_API_TOKEN"):
        return args.token or os.environ["VELORA_API_TOKEN"]
    data_dir = args.data_dir if args.data_dir is not None else Settings().resolved_data_dir
    return TokenFile(data_dir).read()


def cmd_submit(args: argparse.Namespace) -> int:
    if args.out and not args.wait:
        print("velora-bench: error: --out needs --wait", file=sys.stderr)
        return EXIT_BAD_INPUT
    return run_submit(args, args.api, client_token(args), wait=args.wait, dashboard_url=args.dashboard)
