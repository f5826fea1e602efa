"""The run state machine (``contract/result.py``): the transitions the store's updates may make."""

from __future__ import annotations

import pytest

from velora_core.contract.result import FINISHED_RUN_STATUSES, RUN_TRANSITIONS, RunStatus, allowed_sources


def test_every_status_has_a_row_and_finished_runs_stay_finished():
    assert set(RUN_TRANSITIONS) == set(RunStatus)
    for status, targets in RUN_TRANSITIONS.items():
        if status.finished and status != RunStatus.FAILED:
            assert targets == frozenset(), status
    # only a run the reaper failed while its worker still ran takes a later result
    assert all(t.finished for t in RUN_TRANSITIONS[RunStatus.FAILED])


def test_allowed_sources_lists_every_status_that_moves_to_the_target():
    assert allowed_sources(RunStatus.RUNNING) == ("queued",)
    assert set(allowed_sources(RunStatus.QUEUED)) == {"waiting", "running"}
    assert set(allowed_sources(RunStatus.COMPLETED)) == {"running", "failed"}
    assert set(allowed_sources("cancelled")) == {"waiting", "queued", "running", "failed"}


def test_allowed_sources_checks_the_sources_a_caller_names():
    assert allowed_sources(RunStatus.CANCELLED, [RunStatus.QUEUED]) == ("queued",)
    with pytest.raises(ValueError, match=r"cannot move from \['completed'\] to 'running'"):
        allowed_sources(RunStatus.RUNNING, [RunStatus.COMPLETED])
    with pytest.raises(ValueError, match="no run status moves to 'waiting'"):
        allowed_sources(RunStatus.WAITING)


def test_the_finished_set_is_the_statuses_with_no_way_back_but_a_late_result():
    assert {"completed", "failed", "out_of_memory", "cancelled"} == FINISHED_RUN_STATUSES
