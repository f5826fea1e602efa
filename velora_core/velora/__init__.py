"""The paper only (VeLoRA, Miles et al., NeurIPS 2024): the compression op and its autograd function
(``projection``), the layer that wraps a linear module and its injection by module replacement (``layer``)."""
