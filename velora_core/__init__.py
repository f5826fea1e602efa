"""velora_core: VeLoRA (Miles et al., NeurIPS 2024) as a PyTorch autograd layer, the training
methods (a base plus memory techniques), memory accounting and the benchmark engine.

Where things are (import them from their modules; this package imports nothing, so that its
torch-free part, :mod:`velora_core.contract`, loads without torch):

- :func:`velora_core.projection.velora_linear`: the autograd op;
- :class:`velora_core.layer.VeLoRALinear`, :func:`velora_core.layer.apply_velora`,
  :func:`velora_core.layer.remove_velora`: the module and its injection;
- :class:`velora_core.contract.method_configs.VeLoRAConfig`: its settings;
- :data:`velora_core.methods.BASE_STEPS`, :data:`velora_core.methods.TECHNIQUE_STEPS`: the code of
  each method part by name (:mod:`velora_core.contract.method_parts` composes and checks names);
- :func:`velora_core.bench.engine.execute`: one benchmark run.
"""
