"""The benchmark engine: models, data, the run lifecycle (``engine.execute``), the training loop,
artifacts, batch search and evaluation. Imports torch; the torch-free contract (specs, presets,
results, the comparison table) is :mod:`velora_core.contract`."""
