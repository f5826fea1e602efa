"""The trainer measures a steady step: step 2 (or a warm-up step first), every micro-batch of it, with
the optimizer state step 1 made; mixed precision runs under autocast (docs/architecture.md)."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from velora_core.bench.engine import model_source
from velora_core.bench.fit_prediction import fake_steps
from velora_core.bench.trainer import Trainer, random_batches
from velora_core.contract.spec import RunSpec
from velora_core.methods.registry import prepare_model


def _spec(method: str = "full", **extra) -> RunSpec:
    return RunSpec.model_validate(
        {
            "workload": "finetune",
            "model": {"source": "preset", "name": "tiny", "memory_only": True},
            "dataset": {"name": "stdlib-corpus"},
            "method": method,
            "seq_len": 32,
            "micro_batch": 2,
            "steps": 3,
            "device": "cpu",
            "save_artifact": False,
            **extra,
        }
    )


def _train(spec: RunSpec, events: list | None = None) -> Trainer:
    torch.manual_seed(0)
    prepared = prepare_model(spec.method, model_source(spec, torch.device("cpu"), None), spec.method_config)
    trainer = Trainer(spec, prepared, torch.device("cpu"), events.append if events is not None else None)
    vocab = prepared.model.get_input_embeddings().num_embeddings
    trainer.train(random_batches(vocab, spec.micro_batch, spec.seq_len, spec.seed), spec.steps)
    return trainer


def _held_from_the_forward(memory, component: str) -> int:
    """The least of ``component`` at any point once the forward has saved something."""
    return min(getattr(p, component) for p in memory.timeline if p.activations > 0)


def _steps_taken(trainer: Trainer) -> set[int]:
    return {int(state["step"]) for state in trainer.optimizer.state.values()}


def test_a_run_tracks_step_two_which_holds_the_optimizer_state_from_its_start():
    """Step 1's forward and backward have no optimizer state (AdamW makes it in its first step()); step
    2's hold it throughout, so its backward peak is step 1's plus the state."""
    trainer = _train(_spec(micro_batch=4, seq_len=64))
    memory = trainer.memory
    assert (memory.tracked_step, memory.warmup_steps, trainer.steps_done) == ("steady", 0, 3)
    assert memory.optimizer_bytes == pytest.approx(2 * memory.trainable_bytes, rel=0.01)
    assert _held_from_the_forward(memory, "optimizer") == memory.optimizer_bytes
    assert memory.peak_phase == "backward" and memory.peak_components["optimizer"] == memory.optimizer_bytes
    # Step 1's peak (kept as an extra) lacks the state: the steady one is higher by about that much.
    gap = memory.measured_peak_bytes - memory.first_step_peak_bytes
    assert gap == pytest.approx(memory.optimizer_bytes, rel=0.1)
    assert memory.run_peak_allocated_bytes is None  # the allocator's run peaks are CUDA's


def test_a_one_step_run_takes_an_untimed_warm_up_step_and_reports_a_steady_peak():
    events: list = []
    trainer = _train(_spec(steps=1), events)
    memory = trainer.memory
    assert (memory.tracked_step, memory.warmup_steps) == ("steady", 1)
    assert _held_from_the_forward(memory, "optimizer") == memory.optimizer_bytes > 0
    assert trainer.steps_done == 1 and [p.step for p in trainer.loss_curve] == [1]
    assert [e.step for e in events] == [1]  # the warm-up is neither logged nor timed
    assert trainer.tokens == 2 * 32
    assert _steps_taken(trainer) == {2}  # its update is real: the optimizer stepped twice


def test_grad_accum_holds_the_accumulated_gradients_at_its_peak():
    """With 4 micro-batches, every trainable parameter's gradient exists from the second one's
    forward on: the tracked step holds all of them at its peak, and fit predicts that step."""
    spec = _spec("lora", grad_accum=4, steps=2)
    memory = _train(spec).memory
    phases = [p.phase for p in memory.timeline]
    backward_starts = sum(1 for a, b in itertools.pairwise(phases) if (a, b) == ("forward", "backward"))
    assert backward_starts == 4  # the tracked step is all four micro-batches
    assert memory.peak_components["gradients"] == memory.gradient_bytes > 0
    single = _train(_spec("lora", steps=2)).memory
    assert single.peak_components["gradients"] < single.gradient_bytes  # made during its only backward
    predicted = fake_steps(spec, timeline_points=2, track_first=False).steady
    assert predicted.peak_bytes == pytest.approx(memory.measured_peak_bytes, rel=0.02)
    assert predicted.peak_components["gradients"] == memory.gradient_bytes


def test_fp16_autocast_trains_with_a_grad_scaler_on_fp32_weights():
    trainer = _train(_spec("lora", autocast="fp16", steps=3))
    assert trainer.step.scaler is not None and trainer.steps_done == 3
    assert all(math.isfinite(p.loss) for p in trainer.loss_curve)
    assert {p.dtype for p in trainer.model.parameters()} == {torch.float32}  # weights stay in dtype
    assert trainer.memory.peak_components["autocast_copies"] > 0


def test_qlora_computes_in_the_autocast_dtype():
    spec = _spec("qlora", autocast="bf16", method_config={"quant": {"compute_dtype": "fp32"}}, steps=2)
    assert spec.method_config["quant"]["compute_dtype"] == "bf16"
    trainer = _train(spec)
    import bitsandbytes as bnb

    layer = next(m for m in trainer.model.modules() if isinstance(m, bnb.nn.Linear4bit))
    assert layer.compute_dtype == torch.bfloat16
    assert all(math.isfinite(p.loss) for p in trainer.loss_curve)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_reads_the_allocators_peaks_around_the_steady_step_and_over_the_run():
    spec = _spec("lora", device="cuda", steps=3)
    torch.manual_seed(0)
    prepared = prepare_model(spec.method, model_source(spec, torch.device("cuda"), None), spec.method_config)
    trainer = Trainer(spec, prepared, torch.device("cuda"), None)
    vocab = prepared.model.get_input_embeddings().num_embeddings
    trainer.train(random_batches(vocab, spec.micro_batch, spec.seq_len, 0), spec.steps)
    memory = trainer.memory
    assert memory.tracked_step == "steady"
    assert memory.run_peak_allocated_bytes >= memory.peak_bytes >= memory.measured_peak_bytes * 0.9
    assert memory.run_peak_reserved_bytes >= memory.cuda_reserved_bytes
