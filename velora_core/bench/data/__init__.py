"""Training and evaluation data for the benchmark engine: offline built-ins, hub and local datasets.

Every source ends in one of three shapes the engine consumes:

- :class:`TrainData`: examples of at most ``seq_len`` tokens, batched as ``input_ids``,
  ``attention_mask`` and ``labels`` (``(micro_batch, L)`` LongTensors; labels are aligned with the
  inputs, as Hugging Face causal LMs expect, and ``-100`` where no loss is taken).
- :class:`LMEvalData`: held-out text packed into ``(N, seq_len)`` blocks, for perplexity.
- :class:`MCEvalData`: k-shot exemplars and test questions, for multiple-choice accuracy.

Built-in datasets (``velora_core.contract.presets.model_shapes.DATASETS``):

- ``stdlib-corpus``: the running Python's standard-library sources, split by file (a hash of the
  relative path puts ~5% of the files in ``validation``). Needs no network.
- ``stdlib-mc``: "which function does this docstring describe?" with four names, from the same
  files. Its ``test`` questions come only from the corpus' validation files, so a model pre-trained
  on ``stdlib-corpus`` has never seen them; ``dev`` (the k-shot exemplars) and ``train`` come from
  disjoint sets of the other files.
- ``stdlib-next-line``: which of four lines comes next in standard-library code (HellaSwag's
  form, scored by log-likelihood, see ``next_line``): ``test`` items from the corpus' validation
  files, ``train`` items from its training files.
- ``c4``, ``alpaca``, ``mmlu``: ``allenai/c4`` ('en', streamed), ``yahma/alpaca-cleaned`` and
  ``cais/mmlu`` ('all') through ``datasets.load_dataset``. Where they load from is a parameter
  (``dataset_paths``), so the same code reads a local folder laid out like the hub repository.

Datasets without a separate evaluation split (Alpaca, and hub or local data without
``eval_split``) hold out the records whose content hash falls below :data:`HOLDOUT_FRACTION`;
training skips exactly those records.

The package, by responsibility: ``sources`` (the standard-library corpus), ``stdlib_questions``
(the ``stdlib-mc`` task), ``next_line`` (the ``stdlib-next-line`` task), ``multiple_choice`` (question layout and answer-letter tokens),
``examples`` (tokenised examples and the three shapes above), ``records`` (hub and local records,
hold-out), ``loaders`` (:func:`load_train_data`, :func:`load_eval_data`) and ``hashing``.
"""

from __future__ import annotations

from velora_core.bench.data.examples import (
    ALPACA_PROMPT_NO_INPUT,
    ALPACA_PROMPT_WITH_INPUT,
    IGNORE_INDEX,
    DataKind,
    Example,
    LMEvalData,
    MCEvalData,
    TrainData,
    alpaca_prompt,
    instruct_examples,
    lm_blocks,
    mc_examples,
    pad_collate,
)
from velora_core.bench.data.loaders import DEFAULT_MAX_BLOCKS, load_eval_data, load_train_data
from velora_core.bench.data.multiple_choice import (
    FEWSHOT_DELIMITER,
    LETTERS,
    SUBJECT_HEADER,
    TARGET_DELIMITER,
    MCQuestion,
    answer_tokens,
    build_kshot_prompt,
    encode_mc_prompt,
    format_mc_question,
    select_shots,
)
from velora_core.bench.data.next_line import (
    ContinuationEvalData,
    ContinuationItem,
    continuation_examples,
    stdlib_next_line,
)
from velora_core.bench.data.records import (
    HOLDOUT_FRACTION,
    HUB_DATASETS,
    Role,
    _held_out,  # noqa: F401  (the tests check the hold-out rule through the package)
    hub_records,
    local_records,
)
from velora_core.bench.data.sources import (
    EXCLUDED_DIRS,
    MAX_SOURCE_FILE_BYTES,
    STDLIB_VALIDATION_FRACTION,
    SourceCorpus,
    SourceFile,
    source_corpus,
    stdlib_documents,
    stdlib_split,
)
from velora_core.bench.data.stdlib_questions import (
    MAX_QUESTION_CHARS,
    STDLIB_MC_DEV_FRACTION,
    _mc_split,  # noqa: F401  (the tests check the split rule through the package)
    stdlib_mc,
)

__all__ = [
    "ALPACA_PROMPT_NO_INPUT",
    "ALPACA_PROMPT_WITH_INPUT",
    "DEFAULT_MAX_BLOCKS",
    "EXCLUDED_DIRS",
    "FEWSHOT_DELIMITER",
    "HOLDOUT_FRACTION",
    "HUB_DATASETS",
    "IGNORE_INDEX",
    "LETTERS",
    "MAX_QUESTION_CHARS",
    "MAX_SOURCE_FILE_BYTES",
    "STDLIB_MC_DEV_FRACTION",
    "STDLIB_VALIDATION_FRACTION",
    "SUBJECT_HEADER",
    "TARGET_DELIMITER",
    "ContinuationEvalData",
    "ContinuationItem",
    "DataKind",
    "Example",
    "LMEvalData",
    "MCEvalData",
    "MCQuestion",
    "Role",
    "SourceCorpus",
    "SourceFile",
    "TrainData",
    "alpaca_prompt",
    "answer_tokens",
    "build_kshot_prompt",
    "continuation_examples",
    "encode_mc_prompt",
    "format_mc_question",
    "hub_records",
    "instruct_examples",
    "lm_blocks",
    "load_eval_data",
    "load_train_data",
    "local_records",
    "mc_examples",
    "pad_collate",
    "select_shots",
    "source_corpus",
    "stdlib_documents",
    "stdlib_mc",
    "stdlib_next_line",
    "stdlib_split",
]
