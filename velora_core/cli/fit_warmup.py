"""The warm-up of a prediction process that waits for its request on standard input: the API's
*spare* (``backend/api/routes/fit.py``, docs/service.md "Will it fit"), started before anyone asks, so
that a request pays only for its prediction.

Most of the cost is paid before this runs: ``python -m velora_core.bench.fit_estimate`` imports
torch, transformers and the engine at its top (~9 s on a 2-core CPU). What a prediction still does on
first use is left: the modules the engine and the method code import inside functions, the model
classes transformers loads lazily by ``model_type``, peft's LoRA layers (their 4-bit variant
included), and bitsandbytes' 4-bit code table. This module does those: ~0.1 s, saved from the
request's time (docs/service.md, "Will it fit: the warm spare", has the measurements).

Imported only by ``velora_core.cli.fit_command`` when the request comes on standard input (it imports
torch; the CLI's parser must not).
"""

from __future__ import annotations

import contextlib
import importlib

#: What a prediction imports on first use, beyond ``fit_estimate``'s own imports (found by comparing
#: ``sys.modules`` before and after a prediction of every base and technique).
FIRST_USE_MODULES = (
    "velora_core.bench.engine",  # model_source, imported inside the step functions
    "velora_core.methods.registry",  # prepare_model, idem
    "velora_core.methods.bases",  # the registry resolves "bases:…" and "techniques:…" on use
    "velora_core.methods.techniques",
    "velora_core.velora.layer",
    "velora_core.models.tokenizers",
    "transformers.quantizers.auto",  # a 4-bit model's skeleton
    "transformers.integrations.bitsandbytes",
    "peft.tuners.lora",
    "peft.tuners.lora.bnb",
    # transformers imports a model's classes by its config's model_type: the presets' (LLaMA) and
    # the hub's most asked-for causal LMs
    "transformers.models.llama.modeling_llama",
    "transformers.models.mistral.modeling_mistral",
    "transformers.models.qwen2.modeling_qwen2",
    "transformers.models.gpt2.modeling_gpt2",
)


def warm_up() -> None:
    """Import :data:`FIRST_USE_MODULES` and build bitsandbytes' 4-bit code table, as the first
    prediction would. Best effort, silently: a module that fails here fails again, with the
    prediction's own one-line message, in the request that needs it, while a process that died here
    would fail every request, those that need nothing of it too (a LoRA request on a host whose
    bitsandbytes cannot load)."""
    for name in FIRST_USE_MODULES:
        with contextlib.suppress(Exception):
            importlib.import_module(name)
    with contextlib.suppress(Exception):
        from velora_core.bench.fit_prediction import _warm_bitsandbytes  # inside: best effort, as above

        _warm_bitsandbytes()
