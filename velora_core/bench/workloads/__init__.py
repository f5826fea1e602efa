"""The encoder workloads' side of a run (``contract.workloads``): masked-LM pre-training, image and
sequence classification. The engine keeps its lifecycle and asks :func:`encoder_workload` for the
four things that differ from a causal LM: the model source (its Auto class and head), the
processor saved with the artifact, the training batches and the evaluation.

Classification data is read first, so that the head's size comes from the labels: a pre-trained
base (``model.source='artifact'``, a hub or local model) is loaded with ``num_labels`` and
``ignore_mismatched_sizes``, so a head of another size is initialised afresh.
"""

from __future__ import annotations

import dataclasses
import random
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from velora_core.bench.data import load_eval_data, load_train_data
from velora_core.bench.evaluate.encoder import classification_eval, masked_lm_perplexity
from velora_core.bench.workloads.data import (
    ClassificationData,
    digits_data,
    hub_data,
    masked_batches,
    stdlib_package_data,
)
from velora_core.contract.presets.model_shapes import RobertaPreset, ViTPreset
from velora_core.contract.result import EvalResult
from velora_core.contract.spec import DatasetSpec, RunSpec
from velora_core.contract.workload_registry import ENCODER_WORKLOADS
from velora_core.models.loading import ModelSource, llama_config
from velora_core.models.tokenizers import Tokenizer, load_tokenizer

__all__ = ["ENCODER_WORKLOADS", "EncoderWorkload", "encoder_workload", "preset_config"]


def preset_config(preset: Any):
    """The transformers config of a built-in shape (LLaMA, ViT or RoBERTa)."""
    if isinstance(preset, ViTPreset):
        from transformers import ViTConfig

        return ViTConfig(
            hidden_size=preset.hidden_size,
            intermediate_size=preset.intermediate_size,
            num_attention_heads=preset.num_attention_heads,
            num_hidden_layers=preset.num_hidden_layers,
            image_size=preset.image_size,
            patch_size=preset.patch_size,
            num_channels=preset.num_channels,
        )
    if isinstance(preset, RobertaPreset):
        from transformers import RobertaConfig

        # RoBERTa numbers positions from pad_token_id + 1, hence the two extra position embeddings.
        return RobertaConfig(
            hidden_size=preset.hidden_size,
            intermediate_size=preset.intermediate_size,
            num_attention_heads=preset.num_attention_heads,
            num_hidden_layers=preset.num_hidden_layers,
            vocab_size=preset.vocab_size,
            max_position_embeddings=preset.max_position_embeddings + 2,
            hidden_dropout_prob=preset.dropout,
            attention_probs_dropout_prob=preset.dropout,
            type_vocab_size=1,
            pad_token_id=0,
            bos_token_id=1,
            eos_token_id=2,
        )
    return llama_config(preset)


class ImageProcessor:
    """The image side's stand-in for a tokenizer: saved with the artifact (transformers' image
    processor where the model has one; nothing for the built-in digits, which need none)."""

    pad_token_id = 0

    def __init__(self, hf: Any | None = None) -> None:
        self.hf = hf

    def save(self, directory: str | Path) -> None:
        if self.hf is not None:
            self.hf.save_pretrained(str(directory))


@dataclass
class EncoderWorkload:
    """What :func:`encoder_workload` gives the engine."""

    source: ModelSource
    processor: Tokenizer | ImageProcessor
    batches: Iterator[dict[str, torch.Tensor]]
    num_examples: int
    environment: dict[str, Any]
    evaluate: Callable[[nn.Module, torch.device], EvalResult]


def _image_processor(spec: RunSpec, source: ModelSource) -> Any | None:
    """transformers' image processor of a hub, local or artifact model, if it has one."""
    if source.path is None:
        return None
    if spec.model.source != "hub" and not (Path(source.path) / "preprocessor_config.json").is_file():
        return None
    from transformers import AutoImageProcessor

    return AutoImageProcessor.from_pretrained(source.path, revision=source.revision, trust_remote_code=False)


def _sample(data: ClassificationData, limit: int, seed: int) -> ClassificationData:
    """At most ``limit`` examples (a seeded sample, kept in their order)."""
    if len(data.examples) <= limit:
        return data
    keep = sorted(random.Random(f"eval:{seed}").sample(range(len(data.examples)), limit))
    return dataclasses.replace(data, examples=[data.examples[i] for i in keep])


def _classification_data(
    spec: RunSpec, dataset: DatasetSpec, role: str, tokenizer, image_processor, names=None
) -> ClassificationData:
    split = "train" if role == "train" else "test"
    if dataset.source == "builtin" and dataset.name in ("digits", "digits-rotation"):
        return digits_data(dataset.name, split)
    if dataset.source == "builtin" and dataset.name == "stdlib-package":
        return stdlib_package_data(split, tokenizer, spec.seq_len, spec.seed)
    if dataset.source == "builtin":
        raise ValueError(f"built-in dataset {dataset.name!r} holds no labelled examples")
    limit = dataset.max_examples if role == "train" else None
    return hub_data(dataset, role, tokenizer, image_processor, spec.seq_len, limit, names)


def encoder_workload(spec: RunSpec, source: ModelSource) -> EncoderWorkload:
    """The model source, processor, batches and evaluation of an encoder workload's run.

    Raises:
        ValueError: data that cannot serve the workload (the message says why).
    """
    # The head's input (model.pooling): transformers' own head, or velora_core.models.heads' mean pooling.
    source = dataclasses.replace(source, workload=spec.workload, pooling=spec.model.pooling)
    if spec.workload == "masked-lm":
        tokenizer = load_tokenizer(spec.model, source.path if spec.model.source == "artifact" else None)
        bound = spec.steps * spec.micro_batch * spec.grad_accum if spec.steps is not None else None
        data = load_train_data(spec.dataset, tokenizer, spec.seq_len, spec.seed, max_examples=bound)

        def evaluate_mlm(model: nn.Module, device: torch.device) -> EvalResult:
            if spec.eval.metric == "none":
                return EvalResult(metric="none")
            blocks = load_eval_data(spec.eval, spec.dataset, tokenizer, spec.seq_len, spec.seed)
            result = masked_lm_perplexity(model, blocks.blocks, tokenizer, spec.eval.batch_size, spec.seed)
            result.details.update(dataset=blocks.description, fingerprint=blocks.fingerprint)
            return result

        environment = {"data": data.description, "data_fingerprint": data.fingerprint}
        batches = masked_batches(data.batches(spec.micro_batch, spec.seed), tokenizer, spec.seed)
        return EncoderWorkload(source, tokenizer, batches, data.num_examples, environment, evaluate_mlm)

    image = spec.workload == "image-classification"
    if image:
        hf_processor = _image_processor(spec, source)
        tokenizer, processor = None, ImageProcessor(hf_processor)
    else:
        hf_processor = None
        tokenizer = load_tokenizer(spec.model, source.path if spec.model.source == "artifact" else None)
        processor = tokenizer
    train = _classification_data(spec, spec.dataset, "train", tokenizer, hf_processor)
    names = list(train.label_names)
    head: dict[str, Any] = {  # id2label sets num_labels (1 for a regression's one score)
        "id2label": dict(enumerate(names)),
        "label2id": {n: i for i, n in enumerate(names)},
        "problem_type": "regression" if train.regression else "single_label_classification",
    }
    if source.config is not None:
        config = source.config.__class__.from_dict({**source.config.to_dict(), **head})
        source = dataclasses.replace(source, config=config)
    else:
        source = dataclasses.replace(source, head={**head, "ignore_mismatched_sizes": True})

    def evaluate(model: nn.Module, device: torch.device) -> EvalResult:
        if spec.eval.metric == "none":
            return EvalResult(metric="none")
        data = _classification_data(
            spec, spec.eval.dataset or spec.dataset, "eval", tokenizer, hf_processor, names
        )
        data = _sample(data, spec.eval.max_examples, spec.seed)
        return classification_eval(model, data, spec.eval.metric, spec.eval.batch_size)

    environment = {"data": train.description, "data_fingerprint": train.fingerprint, "labels": names}
    batches = train.batches(spec.micro_batch, spec.seed)
    return EncoderWorkload(source, processor, batches, train.num_examples, environment, evaluate)
