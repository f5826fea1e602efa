"""``/runs``: single runs, their live training curve, and cancellation."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Body, HTTPException, Query, Request, Response
from pydantic import BaseModel
from sqlalchemy.orm import Session

from backend import store
from backend.api.deps import (
    DatabaseDep,
    DispatcherDep,
    ReadAccess,
    SessionDep,
    SettingsDep,
    WriteAccess,
    WriteSessionDep,
    committed,
    polled_read,
)
from backend.api.docs import SPEC_RULES, add_rules, error_responses
from backend.api.idempotency import IdempotencyKeyHeader, create_once
from backend.api.quotas import enforce_quotas
from backend.api.schemas import (
    AfterStepQuery,
    IdPath,
    IdQuery,
    MetricsPublic,
    OffsetQuery,
    RunDetail,
    RunPublic,
    RunsPublic,
)
from backend.api.validation import JsonContent, check_limits, parse_strict
from velora_core.contract.result import ItemRecords, RunStatus
from velora_core.contract.spec import RunSpec

router = APIRouter(prefix="/runs", tags=["runs"], responses=error_responses(401, 503))


def _read_run(session: Session, run_id: int) -> RunDetail:
    run = store.get_run(session, run_id=run_id)
    if run is None:
        raise HTTPException(status_code=404, detail="Run not found")
    return RunDetail.model_validate(run)


_BODY_SCHEMA = {
    "requestBody": {
        "required": True,
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/RunSpec"}}},
    }
}


@router.post(
    "",
    status_code=201,
    response_model=RunDetail,
    openapi_extra=_BODY_SCHEMA,
    responses=error_responses(403, 413, 415, 429),
)
def create_run(
    _content_type: JsonContent,
    body: Annotated[dict[str, Any], Body()],
    session: WriteSessionDep,
    settings: SettingsDep,
    dispatcher: DispatcherDep,
    principal: WriteAccess,
    request: Request,
    response: Response,
    idempotency_key: IdempotencyKeyHeader = None,
) -> RunDetail:
    """Queue a single run (a ``RunSpec``). A fine-tune from ``model.source='artifact'`` gets a base
    run of its own for the pre-training (listed in its ``depends_on``); it waits for that run."""
    spec = parse_strict(RunSpec, body)
    check_limits([spec], settings, ("body",))
    scope = f"POST /runs {principal.scope}"
    payload_hash = store.request_hash(spec.model_dump(mode="json"))
    added: list = []

    def create():  # the run and its base run, if it needs one; the run is the resource
        enforce_quotas(request, session, principal, store.plan_size([spec]))  # a replay is not counted
        added.extend(
            store.add_planned_runs(
                session,
                specs=[spec],
                queue=settings.queue_for_device(spec.device),
                submitted_by=principal.scope,
            )
        )
        return added[-1]

    run_id, run = create_once(
        session, response, scope=scope, key=idempotency_key, payload_hash=payload_hash, create=create
    )
    if run is None:
        return committed(session, _read_run(session, run_id))
    store.mark_dispatched(session, run_ids=dispatcher.dispatch(store.dispatchable(added)))
    return committed(session, _read_run(session, run.id))


def _json(model: BaseModel) -> Response:
    # Serialised here, once: FastAPI would otherwise validate the model a second time.
    return Response(content=model.model_dump_json(), media_type="application/json")


# The two polled reads (dashboards poll them every second) are ``async`` and run their query through
# ``polled_read``: on the event loop for SQLite, in the thread pool for PostgreSQL. Writes, which may
# wait for SQLite's write lock, are plain routes (thread pool).
@router.get("", response_model=RunsPublic)
async def read_runs(
    session: SessionDep,
    db: DatabaseDep,
    _: ReadAccess,
    status: Annotated[list[RunStatus] | None, Query(description="Repeat to match several.")] = None,
    method: Annotated[str | None, Query(max_length=50)] = None,
    comparison_id: IdQuery = None,
    offset: OffsetQuery = 0,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
) -> Response:
    """Runs, newest first, filtered by status, method and comparison; paginated by offset/limit."""
    rows, count = await polled_read(
        db,
        lambda: store.list_runs(
            session,
            offset=offset,
            limit=limit,
            status=[s.value for s in status] if status else None,
            method=method,
            comparison_id=comparison_id,
        ),
    )
    # One validation of the whole answer from plain dicts (the fastest input pydantic has).
    return _json(RunsPublic.model_validate({"data": rows, "count": count, "offset": offset, "limit": limit}))


@router.get("/{run_id}", response_model=RunDetail, responses=error_responses(404))
def read_run(run_id: IdPath, session: SessionDep, _: ReadAccess) -> Response:
    return _json(_read_run(session, run_id))


@router.get("/{run_id}/metrics", response_model=MetricsPublic, responses=error_responses(404))
async def read_run_metrics(
    run_id: IdPath,
    session: SessionDep,
    db: DatabaseDep,
    _: ReadAccess,
    after_step: AfterStepQuery = -1,
    limit: Annotated[int, Query(ge=1, le=10_000)] = 1000,
) -> Response:
    """The run's training curve, one point per recorded step, in step order."""
    status, points = await polled_read(
        db, lambda: store.list_metrics(session, run_id=run_id, after_step=after_step, limit=limit)
    )
    if status is None:
        raise HTTPException(status_code=404, detail="Run not found")
    last_step = points[-1]["step"] if points else after_step
    return _json(
        MetricsPublic.model_validate(
            {"run_id": run_id, "status": status, "data": points, "last_step": last_step}
        )
    )


class ItemsPublic(BaseModel):
    """A page of a run's per-item evaluation records (``velora_core.contract.result.ItemRecords``)."""

    run_id: int
    metric: str
    count: int
    offset: int
    limit: int
    data: list[dict[str, Any]]


@router.get("/{run_id}/items", response_model=ItemsPublic, responses=error_responses(404))
def read_run_items(
    run_id: IdPath,
    session: SessionDep,
    _: ReadAccess,
    offset: OffsetQuery = 0,
    limit: Annotated[int, Query(ge=1, le=100_000)] = 1000,
    format: Annotated[
        Literal["json", "jsonl"], Query(description="`jsonl`: a file, one item a line.")
    ] = "json",
) -> Response:
    """What the run's evaluation did with each item: prompt hash, choice log-likelihoods, choice,
    answer, correctness (and the evaluation's further columns), in item order."""
    run = store.get_run(session, run_id=run_id)
    if run is None:
        raise HTTPException(status_code=404, detail="Run not found")
    evaluation = (run.result or {}).get("eval") or {}
    if not evaluation.get("items"):
        raise HTTPException(
            status_code=404,
            detail=f"Run {run_id} has no item records (status {run.status}; perplexity and older runs keep none)",
        )
    records = ItemRecords.model_validate(evaluation["items"])
    if format == "jsonl":
        return Response(
            content=records.jsonl(offset, limit),
            media_type="application/x-ndjson",
            headers={"Content-Disposition": f'attachment; filename="run-{run_id}-items.jsonl"'},
        )
    page = {
        "run_id": run_id,
        "metric": evaluation["metric"],
        "count": len(records),
        "offset": offset,
        "limit": limit,
    }
    return _json(ItemsPublic.model_validate({**page, "data": records.rows(offset, limit)}))


@router.post("/{run_id}/cancel", response_model=RunPublic, responses=error_responses(403, 404, 409))
def cancel_run(run_id: IdPath, session: WriteSessionDep, _: WriteAccess) -> RunPublic:
    """Cancel a queued run at once, or ask a running one to stop (it does within a training step)."""
    try:
        run = store.request_cancel(session, run_id=run_id)
    except LookupError:
        raise HTTPException(status_code=404, detail="Run not found") from None
    except store.StoreError as exc:
        raise HTTPException(status_code=409, detail=str(exc)) from None
    store.settle_waiting_runs(session)  # a cancelled base run cancels the runs waiting for it
    session.commit()
    return RunPublic.model_validate(run)


add_rules(router, create_run, SPEC_RULES)
