"""The sequence-classification workload: a RoBERTa, texts (or text pairs) to classes or a score
(VeLoRA's Table 2, GLUE); its head reads the first token or the mean (``model.pooling``)."""

from __future__ import annotations

from typing import Any

from velora_core.bench.workloads.classification import ClassificationWorkload
from velora_core.bench.workloads.strategy import Processor
from velora_core.contract.spec import RunSpec
from velora_core.models.loading import ModelSource
from velora_core.models.tokenizers import Tokenizer, load_tokenizer


class SequenceClassificationWorkload(ClassificationWorkload):
    """Texts read with the model's tokenizer, to classes (or a regression's score)."""

    def _processors(
        self, spec: RunSpec, source: ModelSource
    ) -> tuple[Tokenizer | None, Any | None, Processor]:
        tokenizer = load_tokenizer(spec.model, source.path if spec.model.source == "artifact" else None)
        return tokenizer, None, tokenizer
