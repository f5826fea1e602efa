"""``/comparisons``: queue a workload under several methods and read back the side-by-side table."""

from __future__ import annotations

from collections import Counter
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Body, HTTPException, Query, Request, Response
from pydantic import ValidationError
from sqlalchemy.orm import Session

from backend import store
from backend.api.deps import (
    DispatcherDep,
    Principal,
    ReadAccess,
    SessionDep,
    SettingsDep,
    WriteAccess,
    WriteSessionDep,
    committed,
)
from backend.api.docs import SPEC_RULES, add_rules, error_responses
from backend.api.idempotency import IdempotencyKeyHeader, create_once
from backend.api.quotas import enforce_quotas
from backend.api.schemas import (
    ComparisonDetail,
    ComparisonFromPreset,
    ComparisonPublic,
    ComparisonsPublic,
    IdPath,
    OffsetQuery,
    RunPublic,
    SummaryRow,
)
from backend.api.validation import JsonContent, check_limits, from_pydantic, invalid, parse_strict
from backend.settings import Settings
from backend.tables import Comparison, Run
from velora_core.contract.intervals import mean_and_spread
from velora_core.contract.plan import ROLE_METHOD
from velora_core.contract.presets.comparisons import COMPARISON_PRESETS, comparison_preset
from velora_core.contract.result import (
    MEMORY_COMPONENTS,
    ComparisonStatus,
    RunResult,
    RunStatus,
    full_reference,
    headline_memory_bytes,
    memory_vs_full,
    total_memory_bytes,
)
from velora_core.contract.spec import ComparisonSpec
from velora_core.contract.table import MethodRow, comparison_table, table_csv, table_json

router = APIRouter(prefix="/comparisons", tags=["comparisons"], responses=error_responses(401, 503))

#: What ``POST /comparisons`` accepts; parsed by :func:`parse_comparison`, documented from here.
BODY_MODELS = (ComparisonSpec, ComparisonFromPreset)
_BODY_SCHEMA = {
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {
                "schema": {"oneOf": [{"$ref": f"#/components/schemas/{m.__name__}"} for m in BODY_MODELS]},
                "examples": {
                    "preset": {"summary": "A named preset", "value": {"preset": "cpu-smoke"}},
                },
            }
        },
    }
}


def parse_comparison(body: dict[str, Any], settings: Settings) -> tuple[ComparisonSpec, str | None]:
    """A validated ComparisonSpec (and the preset name) from a request body.

    Raises:
        RequestValidationError: anything wrong with the body, with the offending field's location.
    """
    if "preset" in body:
        try:
            request = ComparisonFromPreset.model_validate(body)
        except ValidationError as exc:
            raise from_pydantic(exc, ("body",)) from None
        try:
            spec = comparison_preset(request.preset, request.overrides, strict=True)
        except KeyError:
            known = sorted(COMPARISON_PRESETS)
            raise invalid(
                ("body", "preset"), f"unknown preset {request.preset!r}; choose one of {known}"
            ) from None
        except ValidationError as exc:
            raise from_pydantic(exc, ("body", "overrides")) from None
        except (ValueError, TypeError) as exc:
            raise invalid(
                ("body", "overrides"), f"invalid overrides for preset {request.preset!r}: {exc}"
            ) from None
        preset = request.preset
    else:
        spec = parse_strict(ComparisonSpec, body)
        preset = None
    check_limits(spec.runs(), settings, ("body", "base"))
    return spec, preset


def _public(comparison: Comparison) -> ComparisonPublic:
    statuses = [run.status for run in comparison.runs]
    return ComparisonPublic(
        id=comparison.id,
        name=comparison.name,
        preset=comparison.preset,
        spec_hash=comparison.spec_hash,
        created_at=comparison.created_at,
        status=ComparisonStatus.of(statuses),
        run_ids=[run.id for run in comparison.runs],
        status_counts=dict(Counter(statuses)),
    )


def _summary_row(run: Run, full_totals: dict[int, int | float | None]) -> SummaryRow:
    row = SummaryRow(
        run_id=run.id,
        method=run.method,
        seed=run.seed,
        status=RunStatus(run.status),
        steps_done=run.step,
        error=run.error,
        workload=(run.spec or {}).get("workload"),
    )
    result = run.result or {}
    if not result:
        return row
    memory = result.get("memory") or {}
    evaluation = result.get("eval") or {}
    throughput = result.get("throughput") or {}
    total = total_memory_bytes(memory)
    return row.model_copy(
        update={
            "steps_done": result.get("steps_done", run.step),
            "eval_metric": evaluation.get("metric"),
            "eval_value": evaluation.get("value"),
            "eval_chance": evaluation.get("chance"),
            # model_copy does not validate: give the field the tuple its schema declares.
            "eval_ci95": tuple(evaluation["ci95"]) if evaluation.get("ci95") else None,
            "eval_num_examples": evaluation.get("num_examples") or None,
            "tokens_per_s": throughput.get("tokens_per_s"),
            "train_time_s": throughput.get("train_time_s"),
            **{name: memory.get(name) for name in MEMORY_COMPONENTS},
            "total_bytes": total if memory else None,
            "peak_bytes": memory.get("peak_bytes"),
            "measured_peak_bytes": memory.get("measured_peak_bytes"),
            "peak_phase": memory.get("peak_phase"),
            # A stored result from before the steady step measured the first (MemoryReport's default).
            "tracked_step": (memory.get("tracked_step") or "first") if memory else None,
            "temporary_bytes": memory.get("temporary_bytes"),
            "predicted_activation_bytes": memory.get("predicted_activation_bytes"),
            "velora_measured_bytes": memory.get("velora_measured_bytes"),
            "trainable_params": memory.get("trainable_params"),
            "memory_vs_full": memory_vs_full(
                headline_memory_bytes(memory), full_reference(full_totals, run.seed)
            ),
        }
    )


def _with_seed_spread(rows: list[SummaryRow]) -> list[SummaryRow]:
    """Each row with its method's mean and spread over seeds (completed runs; only with several)."""
    done = [r for r in rows if r.status == "completed"]
    spread = {
        m: mean_and_spread([r.eval_value for r in done if r.method == m]) for m in {r.method for r in rows}
    }
    return [
        r.model_copy(
            update={"eval_seeds_mean": spread[r.method][0], "eval_seeds_spread": spread[r.method][1]}
        )
        if spread[r.method][1] is not None
        else r
        for r in rows
    ]


def _run_result(run: Run) -> RunResult:
    """The run's result as the table reads it; a run without one gives its status, steps and error."""
    if run.result:
        result = RunResult.model_validate(run.result)
        return result if result.spec else result.model_copy(update={"spec": run.spec})
    return RunResult(
        method=run.method, status=RunStatus(run.status), error=run.error, steps_done=run.step, spec=run.spec
    )


def method_table(comparison: Comparison) -> list[MethodRow]:
    """The comparison table (velora_core.contract.table) of the comparison's method runs."""
    methods = [run for run in comparison.runs if run.role == ROLE_METHOD]
    return comparison_table(
        [_run_result(run) for run in methods],
        (comparison.spec or {}).get("methods"),
        [run.id for run in methods],
    )


def _detail(comparison: Comparison, *, include_results: bool = False) -> ComparisonDetail:
    # Each method's memory relative to full fine-tuning with the same seed (any seed where that is missing).
    # Base runs (pre-training the fine-tunes' base model) are listed among the runs, not in the table.
    methods = [run for run in comparison.runs if run.role == ROLE_METHOD]
    full_totals = {
        run.seed: headline_memory_bytes(run.result["memory"])
        for run in methods
        if run.method == "full" and run.status == "completed" and run.result and run.result.get("memory")
    }
    return ComparisonDetail(
        **_public(comparison).model_dump(),
        spec=comparison.spec,
        runs=[RunPublic.model_validate(run) for run in comparison.runs],
        summary=_with_seed_spread([_summary_row(run, full_totals) for run in methods]),
        table=method_table(comparison),
        results={str(run.id): run.result for run in comparison.runs if run.result}
        if include_results
        else None,
    )


def _load_detail(session: Session, comparison_id: int, *, include_results: bool = False) -> ComparisonDetail:
    comparison = store.get_comparison(session, comparison_id=comparison_id)
    if comparison is None:
        raise HTTPException(status_code=404, detail="Comparison not found")
    return _detail(comparison, include_results=include_results)


def _create(
    request: Request,
    session: Session,
    spec: ComparisonSpec,
    preset: str | None,
    settings: Settings,
    principal: Principal,
) -> Comparison:
    """Store the comparison and its runs, within the caller's quotas (a replay never gets here)."""
    enforce_quotas(request, session, principal, store.plan_size(spec.runs()))
    queue = settings.queue_for_device(spec.base.device)
    return store.create_comparison(
        session, spec=spec, preset=preset, queue=queue, submitted_by=principal.scope
    )


@router.post(
    "",
    status_code=201,
    response_model=ComparisonDetail,
    openapi_extra=_BODY_SCHEMA,
    responses=error_responses(403, 413, 415, 429),
)
def create_comparison(
    _content_type: JsonContent,
    body: Annotated[dict[str, Any], Body()],
    session: WriteSessionDep,
    settings: SettingsDep,
    dispatcher: DispatcherDep,
    principal: WriteAccess,
    request: Request,
    response: Response,
    idempotency_key: IdempotencyKeyHeader = None,
) -> ComparisonDetail:
    """Queue a comparison: a full ``ComparisonSpec``, or ``{"preset": NAME, "overrides": {...}}``.

    Every run is validated before anything is stored, so a bad request creates nothing. With an
    ``Idempotency-Key`` header a retried request returns the comparison created the first time.
    """
    spec, preset = parse_comparison(body, settings)  # before the database: bad input takes no lock
    scope = f"POST /comparisons {principal.scope}"
    payload_hash = store.request_hash(body)
    comparison_id, comparison = create_once(
        session,
        response,
        scope=scope,
        key=idempotency_key,
        payload_hash=payload_hash,
        create=lambda: _create(request, session, spec, preset, settings, principal),
    )
    if comparison is None:
        return committed(session, _load_detail(session, comparison_id))
    sent = dispatcher.dispatch(store.dispatchable(comparison.runs))
    store.mark_dispatched(session, run_ids=sent)
    return committed(session, _load_detail(session, comparison.id))


@router.get("", response_model=ComparisonsPublic)
def read_comparisons(
    session: SessionDep,
    _: ReadAccess,
    offset: OffsetQuery = 0,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
) -> ComparisonsPublic:
    rows, count = store.list_comparisons(session, offset=offset, limit=limit)
    return ComparisonsPublic(data=[_public(c) for c in rows], count=count, offset=offset, limit=limit)


@router.get("/{comparison_id}", response_model=ComparisonDetail, responses=error_responses(404))
def read_comparison(
    comparison_id: IdPath,
    session: SessionDep,
    _: ReadAccess,
    include: Annotated[
        Literal["results"] | None, Query(description="`results`: add each finished run's result")
    ] = None,
) -> ComparisonDetail:
    """A comparison with its runs and the summary table (memory, accuracy, speed per method)."""
    return _load_detail(session, comparison_id, include_results=include == "results")


@router.get(
    "/{comparison_id}/table",
    responses=error_responses(404)
    | {200: {"content": {"text/csv": {}, "application/json": {}}, "description": "The table."}},
)
def download_table(
    comparison_id: IdPath,
    session: SessionDep,
    _: ReadAccess,
    format: Annotated[Literal["csv", "json"], Query(description="`csv` or `json`")] = "csv",
) -> Response:
    """The comparison table as a file: CSV (one line per method, integer bytes, the settings that
    differ, deltas in points) or JSON (each row with its per-seed detail)."""
    comparison = store.get_comparison(session, comparison_id=comparison_id)
    if comparison is None:
        raise HTTPException(status_code=404, detail="Comparison not found")
    rows = method_table(comparison)
    name = f"comparison-{comparison_id}.{format}"
    headers = {"Content-Disposition": f'attachment; filename="{name}"'}
    if format == "csv":
        return Response(table_csv(rows), media_type="text/csv", headers=headers)
    body = table_json(rows, id=comparison.id, name=comparison.name, spec=comparison.spec)
    return Response(body, media_type="application/json", headers=headers)


@router.post("/{comparison_id}/cancel", response_model=ComparisonDetail, responses=error_responses(403, 404))
def cancel_comparison(comparison_id: IdPath, session: WriteSessionDep, _: WriteAccess) -> ComparisonDetail:
    """Cancel every run of the comparison that has not finished yet."""
    comparison = store.get_comparison(session, comparison_id=comparison_id)
    if comparison is None:
        raise HTTPException(status_code=404, detail="Comparison not found")
    for run in comparison.runs:
        if run.status not in store.FINISHED_STATUSES:
            store.request_cancel(session, run_id=run.id)
    session.commit()
    session.expire_all()
    return committed(session, _load_detail(session, comparison_id))


add_rules(router, create_comparison, SPEC_RULES)
