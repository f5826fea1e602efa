"""Mixed precision as a run setting: what ``autocast`` may be, the precisions that cannot train (refused
with the reason), and how a method's settings follow autocast. No torch (docs/architecture.md,
"Mixed precision")."""

from __future__ import annotations

from typing import Any, Literal

#: Mixed precision: the forward's compute dtype under ``torch.autocast`` (the weights stay in ``dtype``).
Autocast = Literal["bf16", "fp16"]


def check_precision(dtype: str, autocast: str | None, memory_only: bool) -> None:
    """Refuse a precision that cannot train (the reason in the message).

    - ``autocast`` casts fp32 weights down for the forward: with ``dtype`` bf16 or fp16 there is nothing
      to cast (and fp16's GradScaler refuses fp16 gradients).
    - Pure fp16 weights with AdamW and no loss scaling: small gradients flush to zero and updates below
      fp16's resolution are lost, so the run does not train; allowed for memory-only runs (no accuracy).

    Raises:
        ValueError: naming the fields and what to use instead.
    """
    if autocast is not None and dtype != "fp32":
        raise ValueError(
            f"autocast={autocast!r} needs fp32 weights (dtype='fp32'), got dtype={dtype!r}: autocast runs "
            "the forward in lower precision from fp32 master weights; for pure low-precision training "
            "leave autocast unset"
        )
    if dtype == "fp16" and not memory_only:
        raise ValueError(
            "dtype='fp16' (pure fp16 weights) with AdamW and no loss scaling does not train: small gradients "
            "underflow and updates below fp16's resolution are lost; use dtype='fp32' with autocast='fp16' "
            "(a GradScaler), or dtype='bf16' (fp16 weights are allowed for memory-only runs)"
        )


def follow_autocast(settings: dict[str, Any], autocast: str | None) -> dict[str, Any]:
    """A method's (dumped) settings with 4-bit QLoRA's ``quant.compute_dtype`` set to ``autocast``'s
    dtype: under autocast the dequantised weights meet autocast's activations, so the value a preset
    chose for runs without autocast (fp32 on the CPU) gives way, and the stored spec says so."""
    if autocast is None or "quant" not in settings:
        return settings
    return {**settings, "quant": {**settings["quant"], "compute_dtype": autocast}}
