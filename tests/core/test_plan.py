"""plan_runs: a fine-tune's pre-training becomes a base run of its own, shared by every run that needs it."""

from __future__ import annotations

from velora_core.contract.plan import ROLE_BASE, ROLE_METHOD, base_spec, dependency_outcome, plan_runs
from velora_core.contract.presets.comparisons import comparison_preset


def test_one_base_run_first_shared_by_every_method_and_seed() -> None:
    spec = comparison_preset("cpu-smoke", {"methods": ["full", "lora", "qlora"], "seeds": [0, 1]})
    plan = plan_runs(spec.runs())
    assert [p.role for p in plan] == [ROLE_BASE] + [ROLE_METHOD] * 6
    base = plan[0].spec
    assert base.workload == "pretrain" and base.save_artifact
    assert base.spec_hash() == base_spec(plan[1].spec).spec_hash()
    assert all(p.depends_on == (0,) for p in plan[1:])
    assert [p.spec for p in plan[1:]] == spec.runs()  # the runs themselves are unchanged


def test_different_pre_trainings_get_a_base_run_each() -> None:
    short = comparison_preset("cpu-smoke", {"methods": ["lora"], "pretrain": {"steps": 5}}).runs()
    long = comparison_preset("cpu-smoke", {"methods": ["lora"], "pretrain": {"steps": 9}}).runs()
    plan = plan_runs(short + long + short)
    assert [p.role for p in plan] == [ROLE_BASE, ROLE_BASE, ROLE_METHOD, ROLE_METHOD, ROLE_METHOD]
    assert [p.depends_on for p in plan[2:]] == [(0,), (1,), (0,)]
    assert [p.spec.steps for p in plan[:2]] == [5, 9]


def test_runs_without_pre_training_plan_as_they_are() -> None:
    runs = comparison_preset("c4-60m").runs()
    plan = plan_runs(runs)
    assert [p.spec for p in plan] == runs
    assert all(p.role == ROLE_METHOD and p.depends_on == () for p in plan)
    assert base_spec(runs[0]) is None


def test_base_spec_saves_the_artifact_even_if_the_pretrain_spec_said_not_to() -> None:
    run = comparison_preset("cpu-smoke", {"methods": ["lora"], "pretrain": {"save_artifact": False}}).runs()[
        0
    ]
    assert run.model.pretrain.save_artifact is False
    assert base_spec(run).save_artifact is True


def test_what_a_base_that_did_not_complete_does_to_its_dependents() -> None:
    assert dependency_outcome("run 3 (full)", "completed", None) is None
    assert dependency_outcome("run 3 (full)", "failed", "ValueError:  no\n data") == (
        "failed",
        "its base model's pre-training, run 3 (full), failed: ValueError: no data",
    )
    assert dependency_outcome("run 3 (full)", "out_of_memory", None) == (
        "failed",
        "its base model's pre-training, run 3 (full), out of memory",
    )
    assert dependency_outcome("run 3 (full)", "cancelled", "cancelled on request")[0] == "cancelled"
