"""A saved model loads in the ecosystem: ``AutoModelForCausalLM`` + ``AutoTokenizer`` give the run's
own ids and log-likelihoods, and lm-evaluation-harness evaluates the folder directly."""

from __future__ import annotations

from pathlib import Path

import lm_eval
import pytest
import torch
import torch.nn.functional as F
from lm_eval.models.huggingface import HFLM
from lm_eval.tasks import TaskManager
from transformers import AutoModelForCausalLM, AutoTokenizer

from tests.bench.conftest import HubFolder
from velora_core.bench.data import build_kshot_prompt, select_shots
from velora_core.bench.data.records import record_question
from velora_core.bench.engine import execute
from velora_core.contract.hashing import prompt_hash
from velora_core.contract.result import RunStatus
from velora_core.contract.spec import RunSpec
from velora_core.models.tokenizers import ByteTokenizer


@pytest.fixture(scope="module")
def harness_run(tmp_path_factory: pytest.TempPathFactory, mmlu_harness_tasks: Path):
    """A tiny pre-training run evaluated by the harness in memory (``eval.harness_tasks``), saved."""
    spec = RunSpec.model_validate(
        {
            "workload": "pretrain",
            "model": {"source": "preset", "name": "tiny"},
            "dataset": {"source": "builtin", "name": "stdlib-corpus"},
            "seq_len": 64,
            "micro_batch": 4,
            "steps": 3,
            "eval": {
                "harness_tasks": ["tiny_mmlu"],
                "num_fewshot": 1,
                "limit": 2,
                "include_path": str(mmlu_harness_tasks),
                "batch_size": 4,
            },
        }
    )
    result = execute(spec, None, tmp_path_factory.mktemp("artifacts"))
    assert result.status == RunStatus.COMPLETED, result.error
    return result


def test_a_run_evaluated_by_the_harness_records_it(harness_run) -> None:
    assert harness_run.eval.metric == "mc_accuracy" and harness_run.eval.num_examples == 4
    assert harness_run.eval.details["harness"]["lm_eval_version"] == lm_eval.__version__
    assert len(harness_run.eval.items) == 4


def test_auto_tokenizer_loads_the_byte_tokenizer_with_the_same_ids(harness_run) -> None:
    tokenizer = AutoTokenizer.from_pretrained(harness_run.artifact_path)
    byte = ByteTokenizer()
    for text in ["def f(x):\n\treturn x  # é ✓", "<|bos|> literal", ""]:
        assert tokenizer(text)["input_ids"] == byte.encode(text, add_bos=True)
        assert tokenizer.decode(tokenizer(text)["input_ids"], skip_special_tokens=True) == text
    assert (tokenizer.pad_token_id, tokenizer.bos_token_id, tokenizer.eos_token_id) == (0, 1, 2)


def test_auto_classes_give_the_runs_own_loglikelihoods(harness_run, mmlu_folder: HubFolder) -> None:
    model = AutoModelForCausalLM.from_pretrained(harness_run.artifact_path).eval()
    tokenizer = AutoTokenizer.from_pretrained(harness_run.artifact_path)
    # The run's first item: the first test question of the first subject with one exemplar.
    dev = [record_question(r) for r in mmlu_folder.records["dev"]]
    question = record_question(mmlu_folder.records["test"][0])
    prompt = build_kshot_prompt(select_shots(dev, question, 1), question)
    assert prompt_hash(prompt) == harness_run.eval.items.prompt_hash[0]
    context = tokenizer(prompt)["input_ids"]
    lls = []
    for letter in "ABCD":
        ids = tokenizer(prompt + " " + letter)["input_ids"]
        with torch.no_grad():
            logprobs = F.log_softmax(model(torch.tensor([ids])).logits[0].float(), -1)
        lls.append(sum(float(logprobs[t - 1, ids[t]]) for t in range(len(context), len(ids))))
    assert lls == pytest.approx(harness_run.eval.items.loglikelihoods[0], abs=1e-4)


def test_the_harness_evaluates_the_saved_folder_directly(harness_run, mmlu_harness_tasks: Path) -> None:
    lm = HFLM(pretrained=harness_run.artifact_path, device="cpu", batch_size=4)
    out = lm_eval.simple_evaluate(
        model=lm,
        tasks=["tiny_mmlu"],
        num_fewshot=1,
        limit=2,
        task_manager=TaskManager(include_path=str(mmlu_harness_tasks)),
        bootstrap_iters=0,
    )
    samples = {s["prompt_hash"][:16]: s for task in out["samples"].values() for s in task}
    items = harness_run.eval.items
    for digest, lls, correct in zip(items.prompt_hash, items.loglikelihoods, items.correct, strict=True):
        assert [r[0] for r in samples[digest]["filtered_resps"]] == pytest.approx(lls, abs=1e-4)
        assert bool(samples[digest]["acc"]) == correct
