"""Offline fixtures for the data, tokenizer and evaluation tests.

Nothing here downloads: the Hugging Face tokenizer is trained on a few sentences, and the C4,
Alpaca and MMLU fixtures are folders laid out like their hub repositories (data files plus a
README.md whose YAML front matter declares the configs), which ``datasets.load_dataset`` reads
through the same code path as the hub.
"""

from __future__ import annotations

import gzip
import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

# Fail fast instead of waiting on a network this machine does not have (read when HF libraries load).
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

SUBJECTS = ("abstract_algebra", "world_religions")


@dataclass(frozen=True)
class HubFolder:
    """A local folder laid out like a hub dataset repository, and the records of each split in file order."""

    path: Path
    records: dict[str, list[dict[str, Any]]]


def save_bpe_tokenizer(directory: Path, corpus: list[str]) -> Path:
    """Train a byte-level BPE tokenizer (GPT-2 style) on ``corpus``, with bos/eos and no pad; save it."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400, special_tokens=["<s>", "</s>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    backend.train_from_iterator(corpus, trainer)
    PreTrainedTokenizerFast(tokenizer_object=backend, bos_token="<s>", eos_token="</s>").save_pretrained(
        directory
    )
    return directory


@pytest.fixture(scope="session")
def bpe_tokenizer_factory() -> Callable[[Path, list[str]], Path]:
    """:func:`save_bpe_tokenizer`, for tests that need a tokenizer trained on their own text."""
    return save_bpe_tokenizer


@pytest.fixture(scope="session")
def hf_tokenizer_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A BPE tokenizer that, like GPT-2's or LLaMA's, has one token for each of " A" … " D"."""
    corpus = [f"Question: which function returns the path?\nA. abspath\nB. join\nAnswer: {x}" for x in "ABCD"]
    return save_bpe_tokenizer(tmp_path_factory.mktemp("hf_tokenizer"), corpus * 20)


def _write_readme(root: Path, configs: dict[str, dict[str, str]]) -> None:
    lines = ["---", "configs:"]
    for name, splits in configs.items():
        lines += [f"- config_name: {name}", "  data_files:"]
        for split, pattern in splits.items():
            lines += [f"  - split: {split}", f'    path: "{pattern}"']
    (root / "README.md").write_text("\n".join([*lines, "---", "# test fixture", ""]))


def c4_text(split: str, i: int) -> str:
    return f"{split} document {i}: the quick brown fox jumps over the lazy dog {i * 7 % 13}."


@pytest.fixture(scope="session")
def c4_folder(tmp_path_factory: pytest.TempPathFactory) -> HubFolder:
    """Like allenai/c4: ``en/c4-{split}.NNNNN-of-NNNNN.json.gz`` JSON Lines with text/timestamp/url."""
    root = tmp_path_factory.mktemp("c4")
    (root / "en").mkdir()
    shards = {"train": 2, "validation": 1}
    records: dict[str, list[dict[str, Any]]] = {}
    for split, count in shards.items():
        records[split] = []
        for shard in range(count):
            with gzip.open(root / "en" / f"c4-{split}.{shard:05d}-of-{count:05d}.json.gz", "wt") as f:
                for i in range(shard * 30, shard * 30 + 30):
                    text = f"{split} document {i}: the quick brown fox jumps over the lazy dog {i * 7 % 13}."
                    record = {"text": text, "timestamp": "2019-04-25T12:57:54Z", "url": f"u/{i}"}
                    f.write(json.dumps(record) + "\n")
                    records[split].append(record)
    _write_readme(root, {"en": {s: f"en/c4-{s}.*.json.gz" for s in shards}})
    return HubFolder(root, records)


def alpaca_records(count: int) -> list[dict[str, str]]:
    """Alpaca-style records, every other one with an input."""
    return [
        {
            "instruction": f"Add {i} and {i + 1}.",
            "input": f"numbers {i}" if i % 2 else "",
            "output": f"The sum is {2 * i + 1}.",
        }
        for i in range(count)
    ]


@pytest.fixture(scope="session")
def alpaca_folder(tmp_path_factory: pytest.TempPathFactory) -> HubFolder:
    """Like yahma/alpaca-cleaned: one JSON array ``alpaca_data_cleaned.json``, no README configs."""
    root = tmp_path_factory.mktemp("alpaca")
    records = alpaca_records(200)
    (root / "alpaca_data_cleaned.json").write_text(json.dumps(records))
    return HubFolder(root, {"train": records})


@pytest.fixture(scope="session")
def mmlu_folder(tmp_path_factory: pytest.TempPathFactory) -> HubFolder:
    """Like cais/mmlu: parquet files ``all/{split}-00000-of-00001.parquet`` under config 'all'.

    Two subjects; per subject 4 auxiliary_train, 5 dev and 6 test questions.
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    root = tmp_path_factory.mktemp("mmlu")
    (root / "all").mkdir()
    sizes = {"auxiliary_train": 4, "dev": 5, "test": 6}
    records = {}
    for split, size in sizes.items():
        records[split] = [
            {
                "question": f"{split} question {i} about {subject.replace('_', ' ')}?",
                "subject": subject,
                "choices": [f"{split}-{i}-{k}" for k in range(4)],
                "answer": (i + len(subject)) % 4,
            }
            for subject in SUBJECTS
            for i in range(size)
        ]
        pq.write_table(pa.Table.from_pylist(records[split]), root / "all" / f"{split}-00000-of-00001.parquet")
    _write_readme(root, {"all": {s: f"all/{s}-*" for s in sizes}})
    return HubFolder(root, records)


@pytest.fixture(scope="session")
def c4_dir(c4_folder: HubFolder) -> Path:
    return c4_folder.path


@pytest.fixture
def alpaca_record_list() -> Callable[[int], list[dict[str, str]]]:
    """:func:`alpaca_records`, for tests that write their own Alpaca file."""
    return alpaca_records


#: lm-evaluation-harness's mmlu template (lm_eval/tasks/mmlu/default/_default_template_yaml), verbatim.
HARNESS_MMLU_TEXT = '"{{question.strip()}}\\nA. {{choices[0]}}\\nB. {{choices[1]}}\\nC. {{choices[2]}}\\nD. {{choices[3]}}\\nAnswer:"'


@pytest.fixture(scope="session")
def mmlu_harness_tasks(mmlu_folder: HubFolder, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """lm-evaluation-harness tasks over :func:`mmlu_folder`'s parquet files, written as the harness's
    own mmlu tasks are (one task per subject, dev exemplars ``first_n``, the group ``tiny_mmlu``
    weighting by size): ``include_path`` for ``tiny_mmlu`` and ``tiny_mmlu_<subject>``."""
    root = tmp_path_factory.mktemp("harness_tasks")
    data = {
        split: str(mmlu_folder.path / "all" / f"{split}-00000-of-00001.parquet") for split in ("dev", "test")
    }
    (root / "subjects.py").write_text(
        "".join(
            f"def {s}(dataset):\n    return dataset.filter(lambda doc: doc['subject'] == {s!r})\n\n"
            for s in SUBJECTS
        )
    )
    for subject in SUBJECTS:
        (root / f"tiny_mmlu_{subject}.yaml").write_text(
            f"task: tiny_mmlu_{subject}\n"
            "tag: tiny_mmlu_tasks\n"
            "dataset_path: parquet\n"
            f"dataset_kwargs:\n  data_files:\n    dev: {data['dev']}\n    test: {data['test']}\n"
            f"process_docs: !function subjects.{subject}\n"
            "test_split: test\nfewshot_split: dev\nfewshot_config:\n  sampler: first_n\n"
            "output_type: multiple_choice\n"
            f"doc_to_text: {HARNESS_MMLU_TEXT}\n"
            'doc_to_choice: ["A", "B", "C", "D"]\ndoc_to_target: answer\n'
            f'description: "The following are multiple choice questions (with answers) about '
            f'{subject.replace("_", " ")}.\\n\\n"\n'
            "metric_list:\n  - metric: acc\n    aggregation: mean\n    higher_is_better: true\n"
            "metadata:\n  version: 1.0\n"
        )
    (root / "tiny_mmlu.yaml").write_text(
        "group: tiny_mmlu\ntask:\n  - tiny_mmlu_tasks\n"
        "aggregate_metric_list:\n  - metric: acc\n    weight_by_size: true\nmetadata:\n  version: 2\n"
    )
    return root
