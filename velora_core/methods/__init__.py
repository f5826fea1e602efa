"""The training methods' code, each part registered once in ``velora_core.contract.method_parts``
and resolved here by ``registry``: the bases (``bases``), the memory techniques (``techniques``),
what they build (``prepared``) and the optimizers they train with (``optimizers``)."""
