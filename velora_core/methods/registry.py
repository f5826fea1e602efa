"""The code of each method part, resolved from its one registry entry, and their composition.

A method is a base plus memory techniques; ``velora_core.contract.method_parts`` registers each
part once, torch-free, naming its apply step by reference (``module:function`` under
``velora_core.methods``: :mod:`~velora_core.methods.bases`, :mod:`~velora_core.methods.techniques`)
and, for a base, its optimizer (:mod:`~velora_core.methods.optimizers`). This module resolves those
references and runs the steps: the base builds the model ready to train, then the techniques change
it in canonical order (``velora``, ``gc``, ``8bit``, ``offload``). Every part uses the library made
for it: peft (LoRA, LoRA-FA's optimizer), bitsandbytes (4-bit weights, 8-bit AdamW), galore-torch,
transformers' gradient checkpointing, ``torch.autograd.graph.save_on_cpu``; only the composition is
written here.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

from velora_core.contract.code_reference import resolve_reference
from velora_core.contract.method_parts import BASES, METHOD_CODE, TECHNIQUES, MethodPart, parse_method
from velora_core.contract.method_settings import ComposedSettings, method_config_for
from velora_core.methods.prepared import PreparedModel
from velora_core.models.loading import ModelSource

__all__ = ["PreparedModel", "apply_step", "prepare_model"]


@functools.cache
def _resolve(reference: str) -> Callable[..., Any]:
    step = resolve_reference(METHOD_CODE, reference)
    if not callable(step):
        raise LookupError(f"method code {reference!r} is not a function")
    return step


def apply_step(part: MethodPart) -> Callable[..., Any]:
    """The function ``part``'s registry entry names (``apply``).

    Raises:
        LookupError: the reference names no function under ``velora_core.methods``.
    """
    return _resolve(part.apply)


def prepare_model(
    method: str, source: ModelSource, settings: dict[str, Any] | ComposedSettings | None = None
) -> PreparedModel:
    """Build the model for ``method`` (any spelling) from ``source`` with validated ``settings``.

    Raises:
        ValueError: an invalid method or settings (the message names the field), or a technique this
            device cannot run.
    """
    comp = parse_method(method)
    parsed = method_config_for(comp.name, settings)
    base = BASES[comp.base]
    prepared: PreparedModel = apply_step(base)(source, parsed)
    prepared.optimizer = base.optimizer  # the base's registry entry chooses it
    for technique in comp.techniques:  # canonical order
        apply_step(TECHNIQUES[technique])(prepared, parsed, comp)
    return prepared
