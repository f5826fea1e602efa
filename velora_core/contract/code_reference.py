"""How the torch-free registries name code: ``"module:name"``, a module under a package of the
torch side (``velora_core.methods``, ``velora_core.bench.workloads``). The registries hold only the
string; :func:`resolve_reference` imports it where torch is welcome, so the contract stays torch-free."""

from __future__ import annotations

import importlib
from typing import Any


def resolve_reference(package: str, reference: str) -> Any:
    """The object ``reference`` (``"module:name"``) names under ``package``.

    Raises:
        LookupError: no such module under ``package``, or no such name in it (a module that exists
            but fails to import raises its own error).
    """
    module_name, _, name = reference.partition(":")
    if not module_name or not name:
        raise LookupError(f"code reference {reference!r} is not of the form 'module:name'")
    path = f"{package}.{module_name}"
    try:
        module = importlib.import_module(path)  # the torch side, imported when first asked for
    except ModuleNotFoundError as exc:
        if exc.name != path:
            raise
        raise LookupError(f"code reference {reference!r}: no module {path}") from None
    if not hasattr(module, name):
        raise LookupError(f"code reference {reference!r}: {path} has no {name!r}")
    return getattr(module, name)
