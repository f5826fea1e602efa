"""Workloads beyond causal language models: masked-LM pre-training, image and sequence classification
(VeLoRA's Tables 1 and 2: ViT on VTAB-1k, RoBERTa on GLUE). No torch.

A workload names what the model is trained to do, hence its transformers Auto class, the data it
reads and the metrics that evaluate it. ``pretrain`` and ``finetune`` are the causal-LM workloads;
the three here use encoders (a ViT, a RoBERTa), with the built-in shapes :data:`ENCODER_PRESETS`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # pragma: no cover
    from velora_core.contract.spec import RunSpec

#: The causal-LM workloads (the engine's original two).
CAUSAL_LM_WORKLOADS = ("pretrain", "finetune")
#: The encoder workloads defined here.
ENCODER_WORKLOADS = ("masked-lm", "image-classification", "sequence-classification")
#: transformers Auto class each workload loads its model with (``AutoModelFor<...>``).
AUTO_CLASS = {
    "pretrain": "AutoModelForCausalLM",
    "finetune": "AutoModelForCausalLM",
    "masked-lm": "AutoModelForMaskedLM",
    "image-classification": "AutoModelForImageClassification",
    "sequence-classification": "AutoModelForSequenceClassification",
}
#: The model family a built-in preset must have for each workload.
WORKLOAD_FAMILY = {
    "pretrain": "llama",
    "finetune": "llama",
    "masked-lm": "roberta",
    "image-classification": "vit",
    "sequence-classification": "roberta",
}
#: The metrics each workload can be evaluated by; the first is its default.
WORKLOAD_METRICS = {
    "pretrain": ("perplexity", "mc_accuracy", "none"),
    "finetune": ("perplexity", "mc_accuracy", "none"),
    "masked-lm": ("perplexity", "none"),
    "image-classification": ("accuracy", "none"),
    "sequence-classification": ("accuracy", "matthews", "pearson", "none"),
}
#: The kinds of built-in dataset (``presets.DATASETS``) each workload reads.
WORKLOAD_DATA_KINDS = {
    "pretrain": ("lm", "mc", "instruct"),
    "finetune": ("lm", "mc", "instruct"),
    "masked-lm": ("lm",),
    "image-classification": ("image",),
    "sequence-classification": ("text-classes",),
}
#: What each classification metric is, for the views (a higher value is better for all three).
CLASSIFICATION_METRICS = {
    "accuracy": "Accuracy",
    "matthews": "Matthews correlation",
    "pearson": "Pearson correlation",
}
#: How a built-in shape of each family is pre-trained before it is fine-tuned (the spec builder's
#: "pre-train it first"): (workload, built-in dataset, metric).
PRETRAINING = {
    "llama": ("pretrain", "stdlib-corpus", "perplexity"),
    "vit": ("image-classification", "digits-rotation", "accuracy"),
    "roberta": ("masked-lm", "stdlib-corpus", "perplexity"),
}
#: The metrics the views show as percentages.
PERCENT_METRICS = frozenset({"mc_accuracy", "accuracy"})


@dataclass(frozen=True)
class ViTPreset:
    """A ViT shape (transformers' ``ViTConfig``) for image classification."""

    hidden_size: int
    intermediate_size: int
    num_attention_heads: int
    num_hidden_layers: int
    image_size: int
    patch_size: int
    num_channels: int = 3
    description: str = ""
    family: str = "vit"
    #: ViT has no token positions to bound ``seq_len`` (it reads images).
    max_position_embeddings: int | None = None

    def linear_layers(self) -> dict[str, int]:
        """Every ``nn.Linear`` of ``ViTForImageClassification`` by full name, with its input width."""
        h, i = self.hidden_size, self.intermediate_size
        layers = {}
        for n in range(self.num_hidden_layers):
            block = f"vit.layers.{n}"
            for part in ("q_proj", "k_proj", "v_proj", "o_proj"):
                layers[f"{block}.attention.{part}"] = h
            layers[f"{block}.mlp.fc1"] = h
            layers[f"{block}.mlp.fc2"] = i
        layers["classifier"] = h
        return layers


@dataclass(frozen=True)
class RobertaPreset:
    """A RoBERTa shape (``RobertaConfig``) for masked-LM pre-training and sequence classification.

    Vocabulary 320 covers the offline byte-level tokenizer's 259 ids and its mask token (id 259).
    """

    hidden_size: int
    intermediate_size: int
    num_attention_heads: int
    num_hidden_layers: int
    vocab_size: int = 320
    max_position_embeddings: int = 512
    #: Dropout of the hidden states and of the attention probabilities (RobertaConfig's 0.1).
    dropout: float = 0.1
    description: str = ""
    family: str = "roberta"

    def linear_layers(self) -> dict[str, int]:
        """Every ``nn.Linear`` of ``RobertaForSequenceClassification`` by full name, with its input width."""
        h, i = self.hidden_size, self.intermediate_size
        layers = {}
        for n in range(self.num_hidden_layers):
            block = f"roberta.encoder.layer.{n}"
            for part in ("query", "key", "value"):
                layers[f"{block}.attention.self.{part}"] = h
            layers[f"{block}.attention.output.dense"] = h
            layers[f"{block}.intermediate.dense"] = h
            layers[f"{block}.output.dense"] = i
        layers["classifier.dense"] = h
        layers["classifier.out_proj"] = h
        return layers


ENCODER_PRESETS: dict[str, ViTPreset | RobertaPreset] = {
    "vit-digits": ViTPreset(
        64,
        128,
        4,
        4,
        image_size=8,
        patch_size=2,
        num_channels=1,
        description="Tiny ViT for scikit-learn's 8x8 digits (16 patches of 2x2, one channel)",
    ),
    "vit-b16": ViTPreset(
        768,
        3072,
        12,
        12,
        image_size=224,
        patch_size=16,
        description="ViT-B/16's shape (google/vit-base-patch16-224-in21k), random weights",
    ),
    "roberta-stdlib": RobertaPreset(
        128,
        512,
        4,
        4,
        max_position_embeddings=512,
        # Minutes of training on a small corpus: dropout only slows learning down.
        dropout=0.0,
        description="Small RoBERTa for the offline stdlib tasks (byte-level vocabulary, no dropout)",
    ),
    "roberta-base": RobertaPreset(
        768,
        3072,
        12,
        12,
        vocab_size=50265,
        max_position_embeddings=512,
        description="RoBERTa-base's shape (random weights)",
    ),
}


def check_workload(spec: RunSpec, model_presets: dict, datasets: dict) -> None:
    """What a workload asks of the rest of the spec, checked without loading anything.

    Raises:
        ValueError: a preset of another family, a built-in dataset of another kind, a metric the
            workload does not report, a pooling the workload has no head for, or an option the
            encoder workloads do not have.
    """
    workload = spec.workload
    model = spec.model
    base = model.pretrain.model if model.source == "artifact" and model.pretrain is not None else model
    if base.source == "preset":
        family = getattr(model_presets[base.name], "family", "llama")
        if family != WORKLOAD_FAMILY[workload]:
            suited = [w for w, f in WORKLOAD_FAMILY.items() if f == family]
            raise ValueError(
                f"workload {workload!r} needs a {WORKLOAD_FAMILY[workload]} model, but preset {base.name!r} "
                f"is a {family} model (its workloads: {', '.join(suited)})"
            )
    for where, data in (("dataset", spec.dataset), ("eval.dataset", spec.eval.dataset)):
        if data is not None and data.source == "builtin":
            kind = datasets[data.name][0]
            if kind not in WORKLOAD_DATA_KINDS[workload]:
                fitting = sorted(n for n, (k, _) in datasets.items() if k in WORKLOAD_DATA_KINDS[workload])
                raise ValueError(
                    f"workload {workload!r} cannot read built-in {where} {data.name!r} ({kind} data); "
                    f"choose one of {fitting}"
                )
    if spec.eval.metric not in WORKLOAD_METRICS[workload]:
        raise ValueError(
            f"workload {workload!r} is evaluated by {', '.join(WORKLOAD_METRICS[workload])}, "
            f"not eval.metric={spec.eval.metric!r}"
        )
    if model.pooling != "cls" and workload != "sequence-classification":
        raise ValueError(
            f"model.pooling={model.pooling!r} is for the sequence-classification workload, not {workload!r}"
        )
    if workload in ENCODER_WORKLOADS:
        if model.memory_only:
            raise ValueError(f"model.memory_only is for the causal-LM workloads, not {workload!r}")
        if spec.max_batch_search:
            raise ValueError(f"max_batch_search is for the causal-LM workloads, not {workload!r}")
