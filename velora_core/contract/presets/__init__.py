"""Presets, as data: model shapes and datasets (``model_shapes``) and comparison presets
(``comparisons``, with the encoder workloads' in ``encoder_comparisons``)."""
