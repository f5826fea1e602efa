"""The encoder workloads in the spec: defaults, clear errors, and old specs' hashes unchanged."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from velora_core.contract.presets.comparisons import comparison_preset
from velora_core.contract.spec import RunSpec


def _spec(**fields) -> RunSpec:
    data = {
        "workload": "image-classification",
        "model": {"source": "preset", "name": "vit-digits"},
        "dataset": {"source": "builtin", "name": "digits"},
    }
    data.update(fields)
    return RunSpec.model_validate(data)


def test_classification_defaults_to_its_metric_and_round_trips():
    spec = _spec()
    assert spec.eval.metric == "accuracy"
    again = RunSpec.model_validate(spec.model_dump(mode="json"))
    assert again.spec_hash() == spec.spec_hash() and again.eval.metric == "accuracy"
    text = _spec(
        workload="sequence-classification",
        model={"source": "preset", "name": "roberta-stdlib"},
        dataset={"source": "builtin", "name": "stdlib-package"},
        eval={"metric": "matthews"},
    )
    assert text.eval.metric == "matthews"


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        (
            {"workload": "pretrain"},
            "workload 'pretrain' needs a llama model, but preset 'vit-digits' is a vit",
        ),
        ({"model": {"source": "preset", "name": "tiny"}}, "needs a vit model, but preset 'tiny' is a llama"),
        ({"dataset": {"name": "stdlib-corpus"}}, "cannot read built-in dataset 'stdlib-corpus' (lm data)"),
        ({"eval": {"metric": "perplexity"}}, "is evaluated by accuracy, none, not eval.metric='perplexity'"),
        ({"max_batch_search": True}, "max_batch_search is for the causal-LM workloads"),
        ({"workload": "segmentation"}, "workload"),
        (
            {"model": {"source": "preset", "name": "vit-digits", "pooling": "mean"}},
            "model.pooling='mean' is for the sequence-classification workload, not 'image-classification'",
        ),
        ({"model": {"source": "preset", "name": "vit-digits", "pooling": "max"}}, "'cls' or 'mean'"),
    ],
)
def test_mismatched_specs_fail_with_a_clear_message(fields, message):
    with pytest.raises(ValidationError) as info:
        _spec(**fields)
    assert message in str(info.value)


def test_causal_lm_workloads_refuse_labelled_data():
    with pytest.raises(ValidationError, match="cannot read built-in dataset 'digits'"):
        RunSpec.model_validate(
            {"workload": "pretrain", "model": {"name": "tiny"}, "dataset": {"name": "digits"}}
        )


def test_new_dataset_columns_are_left_out_of_old_specs():
    spec = RunSpec.model_validate(
        {"workload": "pretrain", "model": {"name": "tiny"}, "dataset": {"name": "stdlib-corpus"}}
    )
    dumped = spec.model_dump(mode="json")["dataset"]
    assert not {"label_field", "image_field", "text_pair_field"} & set(dumped)
    labelled = _spec(dataset={"source": "hub", "name": "uoft-cs/cifar100", "image_field": "img"})
    assert labelled.model_dump(mode="json")["dataset"]["image_field"] == "img"


def test_existing_presets_keep_their_hashes():
    # Hashes name pre-trained artifacts: the encoder workloads' new, unset dataset fields must not
    # change a causal-LM spec's hash (the pre-training base of demo and memory-7b are unchanged since
    # before they existed; demo's fine-tunes have changed task since, so their hash is not pinned).
    assert comparison_preset("demo").base.model.pretrain.spec_hash() == "da5c2fc967e40a32"
    assert comparison_preset("memory-7b").runs()[0].spec_hash() == "b0887cf8edbfb29c"
    dumped = comparison_preset("demo").runs()[0].model_dump(mode="json")["dataset"]
    assert not {"text_pair_field", "image_field", "label_field"} & set(dumped)


@pytest.mark.parametrize("name", ["vit-digits", "roberta-stdlib", "vtab-vit-b16", "glue-roberta-base"])
def test_encoder_presets_expand(name):
    runs = comparison_preset(name).runs()
    assert all(r.workload.endswith("classification") for r in runs)
    assert {r.eval.metric for r in runs} <= {"accuracy", "matthews"}


def _text(**model) -> RunSpec:
    return _spec(
        workload="sequence-classification",
        model={"source": "preset", "name": "roberta-stdlib", **model},
        dataset={"source": "builtin", "name": "stdlib-package"},
    )


def test_pooling_is_left_out_of_the_dump_unless_it_is_mean():
    default, mean = _text(), _text(pooling="mean")
    assert default.model.pooling == "cls" and "pooling" not in default.model_dump(mode="json")["model"]
    assert _text(pooling="cls").spec_hash() == default.spec_hash()
    again = RunSpec.model_validate(mean.model_dump(mode="json"))
    assert again.model.pooling == "mean" and again.spec_hash() == mean.spec_hash() != default.spec_hash()
    with pytest.raises(ValidationError, match="is for the sequence-classification workload, not 'masked-lm'"):
        RunSpec.model_validate(
            {
                "workload": "masked-lm",
                "model": {"source": "preset", "name": "roberta-stdlib", "pooling": "mean"},
                "dataset": {"source": "builtin", "name": "stdlib-corpus"},
            }
        )


def test_roberta_stdlib_fine_tunes_a_mean_pooled_head_on_128_bytes_and_the_hub_preset_keeps_cls():
    runs = comparison_preset("roberta-stdlib").runs()
    assert len(runs) == 6
    for run in runs:
        assert run.model.pooling == "mean" and run.seq_len == 128
        assert run.model.pretrain.workload == "masked-lm" and run.model.pretrain.model.pooling == "cls"
        assert run.model.pretrain.seq_len >= run.seq_len  # every position the fine-tune reads was pre-trained
    assert {r.model.pooling for r in comparison_preset("glue-roberta-base").runs()} == {"cls"}
