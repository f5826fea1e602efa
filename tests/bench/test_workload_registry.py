"""Each workload is one registry entry (``contract/workload_registry.py``) and one strategy module
(``bench/workloads/``): every entry's strategy resolves and implements the engine's protocol."""

from __future__ import annotations

import inspect
import typing

import pytest

from velora_core.bench.workloads import start_workload, strategy_class
from velora_core.bench.workloads.image_classification import ImageProcessor
from velora_core.contract.spec import RunSpec
from velora_core.contract.workload_registry import WORKLOADS, Workload
from velora_core.models.loading import ModelSource


def test_the_spec_offers_exactly_the_registered_workloads_in_their_order():
    assert typing.get_args(RunSpec.model_fields["workload"].annotation) == tuple(WORKLOADS)


@pytest.mark.parametrize("name", list(WORKLOADS))
def test_every_registered_workload_has_a_strategy_with_the_engine_protocol(name):
    cls = strategy_class(name)
    assert list(inspect.signature(cls).parameters) == ["spec", "source"]
    for method in ("training_data", "evaluate"):
        assert callable(getattr(cls, method, None)), f"{cls.__name__}.{method}"


def test_a_strategy_reference_that_names_nothing_is_a_lookup_error(monkeypatch):
    broken = Workload("broken", "AutoModel", "llama", ("none",), ("lm",), "causal_lm:NoSuchWorkload")
    monkeypatch.setitem(WORKLOADS, "broken", broken)
    strategy_class.cache_clear()
    try:
        with pytest.raises(LookupError, match="NoSuchWorkload"):
            strategy_class("broken")
    finally:
        strategy_class.cache_clear()


def test_digits_classification_reads_its_labels_before_the_model_and_sizes_the_head():
    spec = RunSpec.model_validate(
        {
            "workload": "image-classification",
            "model": {"source": "preset", "name": "vit-digits"},
            "dataset": {"source": "builtin", "name": "digits"},
            "micro_batch": 4,
            "steps": 1,
            "device": "cpu",
        }
    )
    from velora_core.contract.presets.model_shapes import MODEL_PRESETS
    from velora_core.models.preset_configs import preset_config

    source = ModelSource(config=preset_config(MODEL_PRESETS["vit-digits"]), workload=spec.workload)
    workload = start_workload(spec, source)
    assert workload.source.config.num_labels == 10
    assert isinstance(workload.processor, ImageProcessor)
    data = workload.training_data(model=None)
    batch = next(data.batches)
    assert batch["pixel_values"].shape == (4, 1, 8, 8) and batch["labels"].shape == (4,)
    assert data.environment["labels"] == [str(d) for d in range(10)]
