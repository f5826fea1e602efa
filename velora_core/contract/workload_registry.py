"""The workloads, registered once: what a model is trained to do, hence its transformers Auto class,
the model family of its built-in shapes, the data it reads and the metrics that evaluate it. No torch.

``pretrain`` and ``finetune`` are causal LMs (LLaMA); ``masked-lm``, ``image-classification`` and
``sequence-classification`` are encoders (RoBERTa, ViT: VeLoRA's Tables 1 and 2). Each is one
:class:`Workload` entry of :data:`WORKLOADS`; the spec's ``workload`` field and every map below are
derived from that table, and its ``strategy`` names the engine's code for it (a module of
``velora_core.bench.workloads``), resolved on the torch side. Adding a workload is one entry here
and one strategy module there.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from velora_core.contract.presets.model_shapes import DATASETS, MODEL_PRESETS

#: The module of the engine's workload strategies (``strategy`` names a class in one of its modules).
STRATEGIES = "velora_core.bench.workloads"


@dataclass(frozen=True)
class Workload:
    """One workload.

    Attributes:
        name: the spec's ``workload`` value.
        auto_class: the transformers Auto class its model loads with (``AutoModelFor<...>``).
        family: the model family a built-in shape must have (``MODEL_PRESETS[...].family``).
        metrics: the ``eval.metric`` values it reports; the first is its default.
        data_kinds: the kinds of built-in dataset (``DATASETS``) it reads.
        strategy: ``module:Class`` under :data:`STRATEGIES`, the engine's code for it.
        new_head: the module a fine-tune adds on top of the encoder, trained in full beside LoRA's
            adapters (peft's ``modules_to_save``) and kept unquantised by QLoRA; None for none.
        peft_task_type: peft's ``task_type`` for its LoRA adapters.
        poolings: the ``model.pooling`` values its head reads from.
        memory_only: whether ``model.memory_only`` (random weights, random tokens) is offered.
        batch_search: whether ``max_batch_search`` (the largest micro-batch that fits) is offered.
    """

    name: str
    auto_class: str
    family: str
    metrics: tuple[str, ...]
    data_kinds: tuple[str, ...]
    strategy: str
    new_head: str | None = None
    peft_task_type: str | None = None
    poolings: tuple[str, ...] = ("cls",)
    memory_only: bool = False
    batch_search: bool = False

    @property
    def default_metric(self) -> str:
        return self.metrics[0]


def _causal_lm(name: str) -> Workload:
    """A causal-LM workload: the two differ only in what their data is for."""
    return Workload(
        name,
        auto_class="AutoModelForCausalLM",
        family="llama",
        metrics=("perplexity", "mc_accuracy", "none"),
        data_kinds=("lm", "mc", "instruct"),
        strategy="causal_lm:CausalLMWorkload",
        peft_task_type="CAUSAL_LM",
        memory_only=True,
        batch_search=True,
    )


#: Every workload, in the order the spec's schema and the dashboard list them.
WORKLOADS: dict[str, Workload] = {
    w.name: w
    for w in (
        _causal_lm("pretrain"),
        _causal_lm("finetune"),
        Workload(
            "masked-lm",
            auto_class="AutoModelForMaskedLM",
            family="roberta",
            metrics=("perplexity", "none"),
            data_kinds=("lm",),
            strategy="masked_lm:MaskedLMWorkload",
        ),
        Workload(
            "image-classification",
            auto_class="AutoModelForImageClassification",
            family="vit",
            metrics=("accuracy", "none"),
            data_kinds=("image",),
            strategy="image_classification:ImageClassificationWorkload",
            new_head="classifier",
        ),
        Workload(
            "sequence-classification",
            auto_class="AutoModelForSequenceClassification",
            family="roberta",
            metrics=("accuracy", "matthews", "pearson", "none"),
            data_kinds=("text-classes",),
            strategy="sequence_classification:SequenceClassificationWorkload",
            new_head="classifier",
            poolings=("cls", "mean"),
        ),
    )
}

#: The workload names (the spec's ``workload`` Literal is made of these).
WORKLOAD_NAMES = tuple(WORKLOADS)
#: The causal-LM workloads and the encoder workloads (a LLaMA model, or a RoBERTa/ViT one).
CAUSAL_LM_WORKLOADS = tuple(n for n, w in WORKLOADS.items() if w.auto_class == "AutoModelForCausalLM")
ENCODER_WORKLOADS = tuple(n for n in WORKLOADS if n not in CAUSAL_LM_WORKLOADS)
#: transformers Auto class of each workload.
AUTO_CLASS = {n: w.auto_class for n, w in WORKLOADS.items()}
#: The model family a built-in preset must have for each workload.
WORKLOAD_FAMILY = {n: w.family for n, w in WORKLOADS.items()}
#: The metrics each workload can be evaluated by; the first is its default.
WORKLOAD_METRICS = {n: w.metrics for n, w in WORKLOADS.items()}
#: The kinds of built-in dataset each workload reads.
WORKLOAD_DATA_KINDS = {n: w.data_kinds for n, w in WORKLOADS.items()}

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


def check_workload(
    name: str,
    *,
    base_preset: str | None,
    builtin_datasets: Iterable[tuple[str, str]],
    metric: str,
    pooling: str,
    memory_only: bool,
    max_batch_search: bool,
) -> None:
    """What workload ``name`` asks of the rest of a spec, checked without loading anything.

    Args:
        base_preset: the built-in shape the model is (or is pre-trained from), None for none.
        builtin_datasets: (where, name) of each built-in dataset the spec reads (``dataset``,
            ``eval.dataset``).
        metric, pooling, memory_only, max_batch_search: the spec's values.
    Raises:
        ValueError: a preset of another family, a built-in dataset of another kind, a metric the
            workload does not report, a pooling its head has not, or an option it does not offer.
    """
    workload = WORKLOADS[name]
    if base_preset is not None:
        family = MODEL_PRESETS[base_preset].family
        if family != workload.family:
            suited = [w for w, f in WORKLOAD_FAMILY.items() if f == family]
            raise ValueError(
                f"workload {name!r} needs a {workload.family} model, but preset {base_preset!r} "
                f"is a {family} model (its workloads: {', '.join(suited)})"
            )
    for where, dataset in builtin_datasets:
        kind = DATASETS[dataset][0]
        if kind not in workload.data_kinds:
            fitting = sorted(n for n, (k, _) in DATASETS.items() if k in workload.data_kinds)
            raise ValueError(
                f"workload {name!r} cannot read built-in {where} {dataset!r} ({kind} data); "
                f"choose one of {fitting}"
            )
    if metric not in workload.metrics:
        raise ValueError(
            f"workload {name!r} is evaluated by {', '.join(workload.metrics)}, not eval.metric={metric!r}"
        )
    if pooling not in workload.poolings:
        owners = [w.name for w in WORKLOADS.values() if pooling in w.poolings]
        raise ValueError(f"model.pooling={pooling!r} is for the {', '.join(owners)} workload, not {name!r}")
    if memory_only and not workload.memory_only:
        raise ValueError(f"model.memory_only is for the causal-LM workloads, not {name!r}")
    if max_batch_search and not workload.batch_search:
        raise ValueError(f"max_batch_search is for the causal-LM workloads, not {name!r}")
