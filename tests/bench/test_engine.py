"""The engine end to end on the CPU: cpu-smoke, cancellation, OOM, memory-only, hub paths, JSON."""

from __future__ import annotations

import json
import math
import statistics

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from velora_core.bench.batch_search import find_max_micro_batch
from velora_core.bench.engine import execute, execute_base
from velora_core.bench.trainer import lr_lambda
from velora_core.contract.method_parts import parse_method
from velora_core.contract.plan import ROLE_BASE, plan_runs
from velora_core.contract.presets.comparisons import comparison_preset
from velora_core.contract.result import RunResult, RunStatus
from velora_core.contract.spec import RunSpec


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory):
    return tmp_path_factory.mktemp("artifacts")


@pytest.fixture(scope="module")
def base_result(artifacts):
    """cpu-smoke's base run: the pre-training its fine-tunes start from, a run of its own."""
    (base,) = [p.spec for p in plan_runs(comparison_preset("cpu-smoke").runs()) if p.role == ROLE_BASE]
    return execute_base(base, None, artifacts)


@pytest.fixture(scope="module")
def smoke_results(artifacts, base_result):
    """The real cpu-smoke preset, every method, with the progress events each run sent."""
    spec = comparison_preset("cpu-smoke")
    out = {}
    for run in spec.runs():
        events = []
        out[run.method] = (
            execute(run, events.append, artifacts, base_model=base_result.artifact_path),
            events,
        )
    return out


def test_every_method_completes_cpu_smoke_and_loss_falls(smoke_results):
    assert list(smoke_results) == comparison_preset("cpu-smoke").methods
    assert {"full", "lora", "qlora", "velora+full", "velora+lora", "velora+qlora"} < set(smoke_results)
    for method, (result, events) in smoke_results.items():
        assert result.status == RunStatus.COMPLETED, (method, result.error)
        losses = [e.loss for e in events if e.phase == "train"]
        # Every run starts from the pre-trained base: far below a uniform guess over the bytes.
        assert all(math.isfinite(x) for x in losses) and losses[0] < 0.8 * math.log(259), (method, losses)
        if parse_method(method).base == "full":
            # Training every weight, the loss falls within 20 steps (the first 5 steps' mean against the
            # last 5's, each step on other examples). Adapters, and GaLore's quarter-scale projected
            # updates, on a task the base already models move it by less than the batch-to-batch
            # noise in 20 steps; tests/core/test_techniques.py shows each of them trains.
            assert statistics.fmean(losses[-5:]) < statistics.fmean(losses[:5]), (method, losses)
        assert result.eval.metric == "mc_accuracy" and 0.0 <= result.eval.value <= 1.0
        assert result.eval.chance == pytest.approx(0.25)
        assert result.throughput.tokens_per_s > 0 and result.steps_done == 20
        assert [e.step for e in events if e.phase == "train"] == list(range(1, 21))
        assert (events[-1].phase, events[-1].step, events[-1].total_steps) == ("done", 20, 20)
        assert result.environment["torch"] == torch.__version__ and result.environment["data_fingerprint"]


def test_cpu_smoke_memory_ordering(smoke_results):
    memory = {m: r.memory for m, (r, _) in smoke_results.items()}
    assert memory["qlora"].weight_bytes < memory["lora"].weight_bytes
    assert memory["velora+qlora"].weight_bytes == memory["qlora"].weight_bytes
    for plain in ("lora", "qlora"):
        velora = memory[f"velora+{plain}"]
        assert velora.activation_bytes < memory[plain].activation_bytes
        assert velora.predicted_activation_bytes == velora.velora_measured_bytes > 0
    assert memory["full"].trainable_bytes > 10 * memory["lora"].trainable_bytes
    assert memory["full"].optimizer_bytes == pytest.approx(2 * memory["full"].trainable_bytes, rel=0.01)
    # The alternatives: checkpointing keeps layer inputs only, GaLore a low-rank state, LoRA-FA
    # trains lora_B alone.
    for plain in ("full", "lora"):
        assert memory[f"{plain}+gc"].activation_bytes < 0.25 * memory[plain].activation_bytes
    assert memory["galore"].optimizer_bytes < 0.5 * memory["full"].optimizer_bytes
    assert memory["lora-fa"].gradient_bytes < memory["lora"].gradient_bytes


def test_the_base_run_saves_its_model_and_a_second_one_reuses_it(base_result, artifacts):
    base = comparison_preset("cpu-smoke").base.model.pretrain
    assert base_result.status == RunStatus.COMPLETED, base_result.error
    assert base_result.artifact_path == str(artifacts / base.spec_hash())
    assert (artifacts / base.spec_hash() / "COMPLETE").exists()
    assert base_result.eval.metric == "perplexity" and base_result.eval.value > 1
    assert not list(artifacts.glob(".*.partial"))  # saved under a temporary name, then renamed
    events = []
    again = execute_base(base, events.append, artifacts)  # a later comparison with the same base
    assert again.status == RunStatus.COMPLETED and again.eval == base_result.eval
    assert again.steps_done == base_result.steps_done > 0 and again.loss_curve == base_result.loss_curve
    assert again.throughput == base_result.throughput and again.throughput.train_time_s > 0
    assert again.environment["reused_artifact"] == base_result.artifact_path
    assert [e.phase for e in events] == ["done"] and "reused" in events[0].message
    assert not any(e.phase == "train" for e in events)


def test_a_fine_tune_needs_its_base_model_and_never_trains_one(smoke_results, base_result, tmp_path):
    run = comparison_preset("cpu-smoke", {"steps": 2}).runs()[0]
    events = []
    result = execute(run, events.append, tmp_path)  # no base_model: fails, does not pre-train
    assert result.status == RunStatus.FAILED
    assert "needs its base model, saved by a pre-training run of its own" in result.error
    assert not any(e.phase == "train" for e in events) and not list(tmp_path.iterdir())
    other = comparison_preset("cpu-smoke", {"pretrain": {"steps": 7}}).base.model.pretrain
    wrong = run.model_copy(update={"model": run.model.model_copy(update={"pretrain": other})})
    result = execute(wrong, None, tmp_path, base_model=base_result.artifact_path)
    assert result.status == RunStatus.FAILED and "saved by another pre-training spec" in result.error
    result = execute(run, None, tmp_path, base_model=tmp_path / "nowhere")
    assert result.status == RunStatus.FAILED and "missing or was not saved completely" in result.error


def test_results_round_trip_through_json(smoke_results):
    for result, _ in smoke_results.values():
        again = RunResult.model_validate(json.loads(result.model_dump_json()))
        assert again == result


def small_pretrain(**overrides) -> RunSpec:
    data = {
        "workload": "pretrain",
        "model": {"source": "preset", "name": "tiny"},
        "dataset": {"source": "builtin", "name": "stdlib-corpus"},
        "seq_len": 64,
        "micro_batch": 4,
        "steps": 8,
        "eval": {"metric": "perplexity", "max_examples": 4, "batch_size": 4},
        "save_artifact": False,
    }
    data.update(overrides)
    return RunSpec.model_validate(data)


def test_cancellation_stops_within_one_step(tmp_path):
    seen = []

    def on_progress(event):
        seen.append(event.step)
        return event.phase == "train" and event.step == 3

    result = execute(small_pretrain(steps=50), on_progress, tmp_path)
    assert result.status == RunStatus.CANCELLED
    assert result.steps_done == 3
    assert max(seen) == 3


def test_cuda_out_of_memory_is_a_result(tmp_path):
    def raise_oom(module, args, output):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    def hook(model):
        model.model.layers[1].register_forward_hook(raise_oom)

    result = execute(small_pretrain(), None, tmp_path, model_hook=hook)
    assert result.status == RunStatus.OUT_OF_MEMORY
    assert result.failed_shape == {"micro_batch": 4, "seq_len": 64, "step": 1}
    assert "Tried to allocate" in result.error


def test_failure_is_a_result_not_a_crash(tmp_path):
    missing = tmp_path / "missing.jsonl"
    result = execute(small_pretrain(dataset={"source": "local", "name": str(missing)}), None, tmp_path)
    assert result.status == RunStatus.FAILED
    assert str(missing) in result.error and result.environment["traceback"]
    if not torch.cuda.is_available():
        failed = execute(small_pretrain(device="cuda"), None, tmp_path)
        assert failed.status == RunStatus.FAILED and "no CUDA device" in failed.error


def test_memory_only_measures_without_data_or_accuracy(tmp_path):
    spec = RunSpec.model_validate(
        {
            "workload": "finetune",
            "model": {"source": "preset", "name": "tiny", "memory_only": True},
            "dataset": {"source": "builtin", "name": "stdlib-corpus"},
            "method": "velora+qlora",
            "method_config": {
                "lora": {"r": 4},
                "quant": {"compute_dtype": "fp32"},
                "velora": {"num_groups": 8},
            },
            "seq_len": 32,
            "micro_batch": 2,
            "steps": 1,
            "eval": {"metric": "perplexity"},
        }
    )
    assert spec.eval.metric == "none"
    result = execute(spec, None, tmp_path)
    assert result.status == RunStatus.COMPLETED, result.error
    assert result.eval.metric == "none" and result.eval.value is None
    assert result.memory.weight_bytes_by_dtype.get("nf4", 0) > 0
    # 2 layers × (v_proj, down_proj) × T=64 tokens × G=8 × 4 bytes + v per layer
    v_bytes = 4 * (128 // 8) * 2 + 4 * (352 // 8) * 2
    assert result.memory.predicted_activation_bytes == 4 * 64 * 8 * 4 + v_bytes
    assert result.environment["data"].startswith("random tokens")


def test_epochs_set_the_number_of_steps(tmp_path):
    dataset = {"source": "builtin", "name": "stdlib-corpus", "max_examples": 40}
    result = execute(small_pretrain(steps=None, epochs=0.5, dataset=dataset), None, tmp_path)
    assert result.status == RunStatus.COMPLETED, result.error
    assert result.steps_done == 5  # 40 blocks × 0.5 epochs / micro-batch 4


def save_tiny_hf_model(directory, tokenizer_dir, max_positions: int):
    """A one-layer LLaMA and its HF tokenizer, saved as a hub repository would hold them."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    config = LlamaConfig(
        hidden_size=32,
        intermediate_size=64,
        num_attention_heads=2,
        num_hidden_layers=1,
        vocab_size=len(tokenizer),
        max_position_embeddings=max_positions,
    )
    LlamaForCausalLM(config).save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


def test_hub_model_and_dataset_paths_load_from_local_fixtures(tmp_path, hf_tokenizer_dir, c4_dir):
    """Local folders go through from_pretrained / load_dataset, as hub ids do."""
    model_dir = save_tiny_hf_model(tmp_path / "model", hf_tokenizer_dir, max_positions=128)
    spec = RunSpec.model_validate(
        {
            "workload": "finetune",
            "model": {"source": "local", "name": str(model_dir)},
            "dataset": {
                "source": "local",
                "name": str(c4_dir),
                "config": "en",
                "split": "train",
                "eval_split": "validation",
            },
            "method": "velora+lora",
            "method_config": {"lora": {"r": 2}, "velora": {"num_groups": 4}},
            "seq_len": 32,
            "micro_batch": 2,
            "steps": 3,
            "eval": {"metric": "perplexity", "max_examples": 2, "batch_size": 2},
        }
    )
    result = execute(spec, None, tmp_path / "artifacts")
    assert result.status == RunStatus.COMPLETED, result.error
    assert result.eval.metric == "perplexity" and result.eval.value > 1
    saved = tmp_path / "artifacts" / spec.spec_hash()
    assert (saved / "adapter_config.json").exists()  # LoRA methods save the adapter
    assert (
        "lora_A.weight" in str(list(saved.glob("adapter_model.*")))
        or (saved / "adapter_model.safetensors").exists()
    )


def test_seq_len_beyond_a_loaded_models_limit_fails_clearly(tmp_path, hf_tokenizer_dir):
    save_tiny_hf_model(tmp_path, hf_tokenizer_dir, max_positions=16)
    spec = small_pretrain(workload="finetune", model={"source": "local", "name": str(tmp_path)}, seq_len=64)
    result = execute(spec, None, tmp_path / "a")
    assert result.status == RunStatus.FAILED and "beyond the model's limit of 16" in result.error


def test_max_batch_search_doubles_then_bisects():
    calls = []

    def fits(batch):
        calls.append(batch)
        return batch <= 37

    assert find_max_micro_batch(fits) == 37
    assert calls[:7] == [1, 2, 4, 8, 16, 32, 64]
    assert find_max_micro_batch(lambda b: False) is None
    assert find_max_micro_batch(lambda b: True, cap=100) == 64


def test_schedule_warms_up_then_decays_to_the_floor():
    factor = lr_lambda(warmup=4, total=20, min_ratio=0.1)
    assert [round(factor(s), 3) for s in range(4)] == [0.25, 0.5, 0.75, 1.0]
    assert factor(20) == pytest.approx(0.1)
    assert factor(12) == pytest.approx(0.1 + 0.9 * 0.5)


def test_loss_is_recorded_every_step_and_setup_says_what_it_is_doing(tmp_path):
    events = []
    spec = small_pretrain(steps=12, progress_every=5, eval={"metric": "none"})
    result = execute(spec, events.append, tmp_path)
    assert result.status == RunStatus.COMPLETED
    assert [p.step for p in result.loss_curve] == list(range(1, 13))  # was 1, 5, 10, 12
    setup = [e.message for e in events if e.phase == "setup"]
    assert setup == [
        "loading the model (tiny) on cpu",
        "applying full",
        "preparing the training data (stdlib-corpus)",
    ]


def test_a_long_run_keeps_at_least_a_hundred_loss_points():
    from velora_core.contract.result import LOSS_CURVE_POINTS, loss_curve_every

    for total in (20, 99, 100, 250, 1000, 123_457):
        every = loss_curve_every(total, progress_every=50)
        assert total // every >= min(total, LOSS_CURVE_POINTS)
