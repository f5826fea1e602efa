"""The image-classification workload: a ViT, images to classes (VeLoRA's Table 1, VTAB-1k)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from transformers import AutoImageProcessor

from velora_core.bench.workloads.classification import ClassificationWorkload
from velora_core.bench.workloads.strategy import Processor
from velora_core.contract.spec import RunSpec
from velora_core.models.loading import ModelSource
from velora_core.models.tokenizers import Tokenizer


class ImageProcessor:
    """The image side's stand-in for a tokenizer: saved with the artifact (transformers' image
    processor where the model has one; nothing for the built-in digits, which need none)."""

    pad_token_id = 0

    def __init__(self, hf: Any | None = None) -> None:
        self.hf = hf

    def save(self, directory: str | Path) -> None:
        if self.hf is not None:
            self.hf.save_pretrained(str(directory))


def _hf_image_processor(spec: RunSpec, source: ModelSource) -> Any | None:
    """transformers' image processor of a hub, local or artifact model, if it has one."""
    if source.path is None:
        return None
    if spec.model.source != "hub" and not (Path(source.path) / "preprocessor_config.json").is_file():
        return None
    return AutoImageProcessor.from_pretrained(source.path, revision=source.revision, trust_remote_code=False)


class ImageClassificationWorkload(ClassificationWorkload):
    """Images read with the model's image processor (if it has one), to classes."""

    def _processors(
        self, spec: RunSpec, source: ModelSource
    ) -> tuple[Tokenizer | None, Any | None, Processor]:
        hf = _hf_image_processor(spec, source)
        return None, hf, ImageProcessor(hf)
