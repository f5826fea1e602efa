"""velora_core: VeLoRA (Miles et al., NeurIPS 2024) as a PyTorch autograd layer, the training
methods (a base plus memory techniques), memory accounting and the benchmark engine, one folder per job:

- ``contract/``: the torch-free contract (spec, workloads, method settings, presets, results, table);
- ``velora/``: the paper's op and layer;
- ``methods/``: the method registry and optimizers;
- ``models/``: model and tokenizer loading, heads;
- ``memory/``: byte counting, saved-tensor meter, tracker, report;
- ``bench/``: the engine, trainer, workloads, fit prediction, data and evaluation;
- ``cli/``: the ``velora-bench`` command.

This package imports nothing, so that ``velora_core.contract`` loads without torch.
"""
