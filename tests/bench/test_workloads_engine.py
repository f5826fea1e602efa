"""The encoder workloads end to end on tiny models: image and sequence classification under every
method, masked-LM and pretext pre-training as a base, and hub-shaped local folders."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from transformers import RobertaForSequenceClassification

from velora_core.bench.engine import execute, execute_base
from velora_core.contract.method_parts import parse_method
from velora_core.contract.plan import base_spec
from velora_core.contract.presets.comparisons import ALL_METHODS
from velora_core.contract.presets.encoder_comparisons import (
    ROBERTA_LINEAR,
    ROBERTA_VELORA_TARGETS,
    VIT_LINEAR,
    VIT_VELORA_TARGETS,
)
from velora_core.contract.result import RunStatus
from velora_core.contract.spec import RunSpec
from velora_core.models.heads import RobertaMeanPoolForSequenceClassification


def _method_config(method: str, linear: list[str], velora_targets: list[str]) -> dict:
    parts = parse_method(method)
    config: dict = {}
    if parts.base in ("lora", "qlora", "lora-fa"):
        config["lora"] = {"r": 4, "alpha": 8, "target_modules": linear}
    if parts.base == "qlora":
        config["quant"] = {"compute_dtype": "fp32"}
    if parts.base == "galore":
        config["galore"] = {"rank": 4, "target_modules": linear}
    if "velora" in parts.techniques:
        config["velora"] = {"num_groups": 8, "target_modules": velora_targets}
    return config


def _check_completed(result, metric: str, method: str) -> None:
    assert result.status == RunStatus.COMPLETED, result.error
    assert result.eval.metric == metric and result.eval.value is not None
    low, high = result.eval.ci95
    assert low <= result.eval.value <= high
    memory = result.memory
    assert memory.activation_bytes > 0 and memory.trainable_params > 0
    if method.startswith("velora"):
        # The bytes VeLoRA's layers saved for backward are exactly the analytic prediction.
        assert memory.velora_measured_bytes == memory.predicted_activation_bytes > 0
    else:
        assert memory.predicted_activation_bytes == 0


@pytest.fixture(scope="module")
def cola_dir(tmp_path_factory) -> Path:
    """A GLUE-CoLA-shaped local folder: ``train``/``validation`` parquet files, ``sentence``, ClassLabel."""
    import datasets

    root = tmp_path_factory.mktemp("cola")
    features = datasets.Features(
        {"sentence": datasets.Value("string"), "label": datasets.ClassLabel(names=["bad", "good"])}
    )
    for split, n in (("train", 48), ("validation", 24)):
        sentences = [
            ("the cat sat on the mat" if i % 2 else "mat the on sat cat") + f" {i}" for i in range(n)
        ]
        data = {"sentence": sentences, "label": [i % 2 for i in range(n)]}
        datasets.Dataset.from_dict(data, features=features).to_parquet(str(root / f"{split}.parquet"))
    return root


@pytest.fixture(scope="module")
def stsb_dir(tmp_path_factory) -> Path:
    """A GLUE-STS-B-shaped local folder: sentence pairs with a float similarity score."""
    import datasets

    root = tmp_path_factory.mktemp("stsb")
    for split, n in (("train", 32), ("validation", 16)):
        first = [f"a dog runs in the park {i}" for i in range(n)]
        second = [f"a dog runs {'in the park' if i % 3 else 'away'} {i}" for i in range(n)]
        data = {"sentence1": first, "sentence2": second, "label": [float(i % 3) * 2.5 for i in range(n)]}
        datasets.Dataset.from_dict(data).to_parquet(str(root / f"{split}.parquet"))
    return root


@pytest.mark.slow
@pytest.mark.parametrize("method", ALL_METHODS)
def test_image_classification_trains_and_evaluates_with_every_method(method, tmp_path):
    spec = RunSpec.model_validate(
        {
            "workload": "image-classification",
            "model": {"source": "preset", "name": "vit-digits"},
            "dataset": {"source": "builtin", "name": "digits"},
            "method": method,
            "method_config": _method_config(method, VIT_LINEAR, VIT_VELORA_TARGETS),
            "micro_batch": 8,
            "steps": 2,
            "eval": {"max_examples": 40, "batch_size": 20},
            "save_artifact": False,
        }
    )
    result = execute(spec, artifact_dir=tmp_path)
    _check_completed(result, "accuracy", method)
    assert result.eval.num_examples == 40 and len(result.eval.details["classes"]) == 10
    if method.endswith("lora"):  # the new head trains in full beside the adapters
        assert result.memory.trainable_params > 4 * 64 * 2


def _cola_spec(method: str, cola_dir, pooling: str = "cls", metric: str = "accuracy") -> RunSpec:
    """Two steps of sequence classification on the tiny CoLA folder with the roberta-stdlib shape."""
    return RunSpec.model_validate(
        {
            "workload": "sequence-classification",
            "model": {"source": "preset", "name": "roberta-stdlib", "pooling": pooling},
            "dataset": {"source": "local", "name": str(cola_dir), "text_field": "sentence"},
            "method": method,
            "method_config": _method_config(method, ROBERTA_LINEAR, ROBERTA_VELORA_TARGETS),
            "seq_len": 32,
            "micro_batch": 4,
            "steps": 2,
            "eval": {"metric": metric, "batch_size": 8},
            "save_artifact": False,
        }
    )


@pytest.mark.slow
@pytest.mark.parametrize("method", ALL_METHODS)
def test_sequence_classification_trains_and_evaluates_with_every_method(method, tmp_path, cola_dir):
    spec = _cola_spec(method, cola_dir, metric="matthews")
    result = execute(spec, artifact_dir=tmp_path)
    _check_completed(result, "matthews", method)
    assert result.eval.num_examples == 24 and result.eval.details["classes"] == ["bad", "good"]


@pytest.mark.slow
@pytest.mark.parametrize("pooling", ["cls", "mean"])
def test_masked_lm_base_then_sequence_classification_from_its_artifact(pooling, tmp_path, stsb_dir):
    pretrain = {
        "workload": "masked-lm",
        "model": {"source": "preset", "name": "roberta-stdlib"},
        "dataset": {"source": "builtin", "name": "stdlib-corpus"},
        "seq_len": 32,
        "micro_batch": 4,
        "steps": 2,
        "eval": {"metric": "perplexity", "max_examples": 2, "batch_size": 2},
    }
    spec = RunSpec.model_validate(
        {
            "workload": "sequence-classification",
            "model": {"source": "artifact", "pooling": pooling, "pretrain": pretrain},
            "dataset": {
                "source": "local",
                "name": str(stsb_dir),
                "text_field": "sentence1",
                "text_pair_field": "sentence2",
            },
            "method": "velora+lora",
            "method_config": _method_config("velora+lora", ROBERTA_LINEAR, ROBERTA_VELORA_TARGETS),
            "seq_len": 48,
            "micro_batch": 4,
            "steps": 2,
            "eval": {"metric": "pearson"},
            "save_artifact": False,
        }
    )
    # The masked-LM pre-training is a base run of its own (contract/plan.py), run first.
    base = base_spec(spec)
    base_result = execute_base(base, None, tmp_path)
    saved = tmp_path / base.spec_hash()
    assert base_result.artifact_path == str(saved)
    assert (saved / "COMPLETE").exists() and (saved / "velora_byte_tokenizer.json").exists()
    assert base_result.eval.metric == "perplexity" and math.isfinite(base_result.eval.value)
    assert 1 < base_result.eval.value < 320  # at most the vocabulary for a barely trained model
    heads = []
    result = execute(
        spec, artifact_dir=tmp_path, base_model=base_result.artifact_path, model_hook=heads.append
    )
    _check_completed(result, "pearson", "velora+lora")
    assert result.eval.details["classes"] == ["score"]  # a regression: one output
    head = RobertaMeanPoolForSequenceClassification if pooling == "mean" else RobertaForSequenceClassification
    assert type(heads[0].get_base_model()) is head


@pytest.mark.slow
@pytest.mark.parametrize(
    "method", ["lora", "qlora", "lora-fa", "galore", "full+gc", "lora+gc", "velora+qlora"]
)
def test_a_mean_pooled_head_trains_with_each_base_and_technique(method, tmp_path, cola_dir):
    spec = _cola_spec(method, cola_dir, pooling="mean")
    models = []
    result = execute(spec, artifact_dir=tmp_path, model_hook=models.append)
    _check_completed(result, "accuracy", method)
    model = models[0]
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    assert type(base) is RobertaMeanPoolForSequenceClassification
    trained = {n for n, p in model.named_parameters() if p.requires_grad}
    # The new head trains in full under every method (peft's modules_to_save with LoRA).
    assert any("classifier" in n and "out_proj" in n and "lora" not in n for n in trained)


@pytest.mark.slow
def test_pretext_base_gets_a_new_head_for_the_digits(tmp_path):
    pretrain = {
        "workload": "image-classification",
        "model": {"source": "preset", "name": "vit-digits"},
        "dataset": {"source": "builtin", "name": "digits-rotation"},
        "micro_batch": 8,
        "steps": 2,
        "eval": {"max_examples": 16},
    }
    spec = RunSpec.model_validate(
        {
            "workload": "image-classification",
            "model": {"source": "artifact", "pretrain": pretrain},
            "dataset": {"source": "builtin", "name": "digits"},
            "method": "lora",
            "method_config": _method_config("lora", VIT_LINEAR, VIT_VELORA_TARGETS),
            "micro_batch": 8,
            "steps": 2,
            "eval": {"max_examples": 16},
        }
    )
    base = execute_base(base_spec(spec), None, tmp_path)  # the pretext pre-training, a run of its own
    assert base.status == "completed" and (Path(base.artifact_path) / "COMPLETE").exists()
    result = execute(spec, artifact_dir=tmp_path, base_model=base.artifact_path)
    _check_completed(result, "accuracy", "lora")
    assert len(result.eval.details["classes"]) == 10  # the 4-way rotation head was replaced


def test_hub_shaped_image_folder_and_local_vit(tmp_path):
    """A local ViT with its image processor (save_pretrained) on a save_to_disk image dataset."""
    import datasets
    from PIL import Image
    from transformers import ViTConfig, ViTForImageClassification, ViTImageProcessor

    model_dir = tmp_path / "vit"
    config = ViTConfig(
        hidden_size=32,
        intermediate_size=64,
        num_attention_heads=2,
        num_hidden_layers=1,
        image_size=8,
        patch_size=4,
    )
    ViTForImageClassification(config).save_pretrained(model_dir)
    ViTImageProcessor(size={"height": 8, "width": 8}).save_pretrained(model_dir)
    colours = [(255, 0, 0), (0, 255, 0), (0, 0, 255)]
    images = [Image.new("RGB", (12, 12), colours[i % 3]) for i in range(30)]
    features = datasets.Features(
        {"img": datasets.Image(), "fine_label": datasets.ClassLabel(names=["r", "g", "b"])}
    )
    data = {"img": images, "fine_label": [i % 3 for i in range(30)]}
    split = datasets.Dataset.from_dict(data, features=features)
    datasets.DatasetDict({"train": split, "test": split.select(range(12))}).save_to_disk(
        str(tmp_path / "colours")
    )
    spec = RunSpec.model_validate(
        {
            "workload": "image-classification",
            "model": {"source": "local", "name": str(model_dir)},
            "dataset": {
                "source": "local",
                "name": str(tmp_path / "colours"),
                "image_field": "img",
                "label_field": "fine_label",
                "eval_split": "test",
            },
            "method": "velora+full",
            "method_config": {"velora": {"num_groups": 4, "target_modules": VIT_VELORA_TARGETS}},
            "micro_batch": 6,
            "steps": 3,
        }
    )
    result = execute(spec, artifact_dir=tmp_path / "artifacts")
    _check_completed(result, "accuracy", "velora+full")
    assert result.eval.num_examples == 12 and result.eval.details["classes"] == ["r", "g", "b"]
    assert (Path(result.artifact_path) / "preprocessor_config.json").exists()


def test_a_missing_column_fails_the_run_with_its_name(tmp_path, cola_dir):
    spec = RunSpec.model_validate(
        {
            "workload": "sequence-classification",
            "model": {"source": "preset", "name": "roberta-stdlib"},
            "dataset": {"source": "local", "name": str(cola_dir), "text_field": "text"},
            "seq_len": 32,
            "steps": 1,
        }
    )
    result = execute(spec, artifact_dir=tmp_path)
    assert result.status == RunStatus.FAILED
    assert "has no column ['text']" in result.error


def test_digits_split_is_disjoint_and_the_pretext_sees_only_training_images():
    from velora_core.bench.workloads.data import digits_data

    train, test = digits_data("digits", "train"), digits_data("digits", "test")
    pretext = digits_data("digits-rotation", "train")
    assert 0.15 < len(test.examples) / (len(train.examples) + len(test.examples)) < 0.25
    assert len(pretext.examples) == 4 * len(train.examples)
    train_images = {image.numpy().tobytes() for image, _ in train.examples}
    upright = {image.numpy().tobytes() for image, label in pretext.examples if label == 0}
    assert upright == train_images
    assert not train_images & {image.numpy().tobytes() for image, _ in test.examples}


def test_masking_predicts_a_share_of_the_real_tokens_only():
    from velora_core.bench.workloads.data import MLM_PROBABILITY, mask_batch

    ids = torch.randint(3, 259, (64, 64))
    mask = torch.ones_like(ids)
    mask[:, 48:] = 0
    out = mask_batch(
        {"input_ids": ids, "attention_mask": mask}, 259, (3, 259), torch.Generator().manual_seed(0)
    )
    chosen = out["labels"] != -100
    assert not chosen[:, 48:].any()
    assert abs(chosen.float().sum() / mask.sum() - MLM_PROBABILITY) < 0.02
    assert torch.equal(out["labels"][chosen], ids[chosen])
    assert (out["input_ids"][chosen] == 259).float().mean() > 0.7
    assert torch.equal(out["input_ids"][~chosen], ids[~chosen])
