"""The in-house scorers against lm-evaluation-harness on the same tiny local tasks, item for item, and
the harness run on the trained model in memory (``eval.harness_tasks``)."""

from __future__ import annotations

import hashlib
from pathlib import Path

import lm_eval
import pytest
import torch
from lm_eval.models.huggingface import HFLM
from lm_eval.tasks import TaskManager
from transformers import LlamaConfig, LlamaForCausalLM

from tests.bench.conftest import SUBJECTS, HubFolder
from velora_core.bench.data import build_kshot_prompt, load_eval_data, select_shots
from velora_core.bench.evaluate.causal_lm import mc_accuracy
from velora_core.bench.evaluate.harness import harness_evaluate
from velora_core.contract.intervals import wilson
from velora_core.contract.spec import DatasetSpec, EvalSpec
from velora_core.models.tokenizers import ByteTokenizer, HFTokenizer, Tokenizer


def tiny_llama(vocab: int, positions: int) -> LlamaForCausalLM:
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=vocab,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=4,
        max_position_embeddings=positions,
    )
    return LlamaForCausalLM(config).eval()


def harness_samples(
    model, tokenizer: Tokenizer, include: Path, task: str, shots: int, max_length: int
) -> dict:
    """The harness's own samples of ``task`` (every subtask), keyed by prompt hash."""
    lm = HFLM(pretrained=model, tokenizer=tokenizer.hf_tokenizer(), batch_size=4, max_length=max_length)
    out = lm_eval.simple_evaluate(
        model=lm,
        tasks=[task],
        num_fewshot=shots,
        task_manager=TaskManager(include_path=str(include)),
        log_samples=True,
        bootstrap_iters=0,
    )
    return {s["prompt_hash"][:16]: s for samples in out["samples"].values() for s in samples}


@pytest.fixture(scope="module")
def bpe_tokenizer(hf_tokenizer_dir: Path) -> HFTokenizer:
    return HFTokenizer(hf_tokenizer_dir)


@pytest.mark.parametrize(
    ("tokenizer_name", "max_length"),
    [("byte", 2048), ("byte", 300), ("bpe", 2048)],  # 300 bytes: the 5-shot prompts are cut on the left
)
def test_mmlu_scorer_matches_the_harness_item_for_item(
    tokenizer_name: str,
    max_length: int,
    mmlu_folder: HubFolder,
    mmlu_harness_tasks: Path,
    bpe_tokenizer: HFTokenizer,
) -> None:
    tokenizer = ByteTokenizer() if tokenizer_name == "byte" else bpe_tokenizer
    model = tiny_llama(512, 2048)
    # Our side: the built-in mmlu path reading the same local folder as the harness's tasks.
    data = load_eval_data(
        EvalSpec(metric="mc_accuracy", dataset=DatasetSpec(name="mmlu"), max_examples=1000),
        DatasetSpec(name="stdlib-corpus"),
        tokenizer,
        256,
        0,
        dataset_paths={"mmlu": str(mmlu_folder.path)},
    )
    ours = mc_accuracy(model, tokenizer, data.shots, data.questions, 5, batch_size=3, max_length=max_length)
    theirs = harness_samples(model, tokenizer, mmlu_harness_tasks, "tiny_mmlu", 5, max_length)

    prompts = [build_kshot_prompt(select_shots(data.shots, q, 5), q) for q in data.questions]
    assert len(theirs) == len(prompts) == 12
    for prompt, digest, lls, choice in zip(
        prompts, ours.items.prompt_hash, ours.items.loglikelihoods, ours.items.choice, strict=True
    ):
        sample = theirs[digest]
        assert sample["arguments"][0][0] == prompt  # the same prompt, character for character
        assert [arg[1] for arg in sample["arguments"]] == [" A", " B", " C", " D"]
        harness_lls = [r[0] for r in sample["filtered_resps"]]
        assert lls == pytest.approx(harness_lls, abs=1e-4)
        assert choice == max(range(4), key=harness_lls.__getitem__)  # the same answer
    assert ours.value == pytest.approx(sum(s["acc"] for s in theirs.values()) / 12)
    assert (max(ours.items.extra["tokens_cut"]) > 0) == (max_length < 2048)


def test_a_local_folder_feeds_the_same_questions_as_the_builtin_mmlu_path(mmlu_folder: HubFolder) -> None:
    tokenizer = ByteTokenizer()
    builtin = load_eval_data(
        EvalSpec(metric="mc_accuracy", dataset=DatasetSpec(name="mmlu")),
        DatasetSpec(name="stdlib-corpus"),
        tokenizer,
        256,
        0,
        dataset_paths={"mmlu": str(mmlu_folder.path)},
    )
    local = DatasetSpec(
        source="local", name=str(mmlu_folder.path), config="all", split="dev", eval_split="test"
    )
    folder = load_eval_data(
        EvalSpec(metric="mc_accuracy", dataset=local), DatasetSpec(name="stdlib-corpus"), tokenizer, 256, 3
    )
    assert folder.questions == builtin.questions and folder.shots == builtin.shots
    # Every question gets the first exemplars of its own subject only.
    for q in folder.questions:
        assert {s.subject for s in select_shots(folder.shots, q, 5)} == {q.subject}


def test_harness_evaluate_reports_versions_subject_means_and_wilson_intervals(
    mmlu_harness_tasks: Path,
) -> None:
    model = tiny_llama(320, 2048)
    model.train()
    result = harness_evaluate(
        model,
        ByteTokenizer(),
        ["tiny_mmlu"],
        num_fewshot=2,
        limit=4,
        include_path=str(mmlu_harness_tasks),
        batch_size=4,
    )
    assert model.training  # its mode restored
    harness = result.details["harness"]
    assert harness["lm_eval_version"] == lm_eval.__version__
    group = harness["tasks"]["tiny_mmlu"]
    assert group["version"] == "2" and group["num_fewshot"] == 2 and group["n"] == 8  # limit: 4 per subject
    assert group["subtasks"][f"tiny_mmlu_{SUBJECTS[0]}"]["version"] == 1.0
    k = sum(result.items.correct)
    assert result.value == pytest.approx(k / 8) == pytest.approx(group["acc"])
    assert result.ci95 == pytest.approx(wilson(k, 8))
    subjects = group["subtasks"]
    assert group["mean_over_subtasks"] == pytest.approx(sum(s["acc"] for s in subjects.values()) / 2)
    assert group["mean_over_questions"] == pytest.approx(result.value)
    assert sorted(set(result.items.extra["task"])) == sorted(subjects)
    assert result.chance == pytest.approx(0.25) and "not merged" in result.details["adapters"]


def test_harness_evaluate_refuses_an_unknown_task(mmlu_harness_tasks: Path) -> None:
    with pytest.raises(ValueError, match="no task"):
        harness_evaluate(
            tiny_llama(320, 64),
            ByteTokenizer(),
            ["no_such_task_anywhere"],
            num_fewshot=None,
            limit=None,
            include_path=str(mmlu_harness_tasks),
            batch_size=1,
        )


def test_prompt_hash_is_the_harness_prompt_hash() -> None:
    from velora_core.contract.hashing import prompt_hash

    assert prompt_hash("Answer:") == hashlib.sha256(b"Answer:").hexdigest()[:16]


def test_continuation_metrics_are_the_harness_acc_acc_norm_and_acc_mutual_info(tmp_path: Path) -> None:
    import json

    from velora_core.bench.data import stdlib_next_line
    from velora_core.bench.evaluate.continuation import continuation_accuracy

    items = stdlib_next_line("test")[:16]
    (tmp_path / "items.jsonl").write_text(
        "".join(
            json.dumps({"context": i.context, "endings": list(i.endings), "answer": i.answer}) + "\n"
            for i in items
        )
    )
    (tmp_path / "next_line.yaml").write_text(
        "task: tiny_next_line\ndataset_path: json\n"
        f"dataset_kwargs:\n  data_files:\n    test: {tmp_path / 'items.jsonl'}\n"
        "test_split: test\noutput_type: multiple_choice\n"
        'doc_to_text: "{{context}}"\ndoc_to_choice: "{{endings}}"\ndoc_to_target: answer\ntarget_delimiter: ""\n'
        "metric_list:\n"
        + "".join(
            f"  - metric: {m}\n    aggregation: mean\n    higher_is_better: true\n"
            for m in ("acc", "acc_norm", "acc_mutual_info")
        )
    )
    model, tokenizer = tiny_llama(320, 512), ByteTokenizer()
    ours = continuation_accuracy(model, tokenizer, items, batch_size=5)
    theirs = harness_samples(model, tokenizer, tmp_path, "tiny_next_line", 0, 512)
    for index, digest in enumerate(ours.items.prompt_hash):
        sample = theirs[digest]
        assert sample["arguments"][0][0] == items[index].context
        harness_lls = [r[0] for r in sample["filtered_resps"]][: len(items[index].endings)]
        assert ours.items.loglikelihoods[index] == pytest.approx(harness_lls, abs=1e-4)
        for metric in ("acc", "acc_norm", "acc_mutual_info"):
            assert (ours.items.extra[f"{metric}_choice"][index] == items[index].answer) == bool(
                sample[metric]
            )
    for metric in ("acc", "acc_norm", "acc_mutual_info"):
        share = sum(s[metric] for s in theirs.values()) / len(items)
        assert ours.details["harness_metrics"][metric]["value"] == pytest.approx(share)
    assert ours.details["headline"].startswith("pmi")
