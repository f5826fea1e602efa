"""Memory accounting for one training step: tensors' bytes as stored (``tensor_bytes``), the activations
saved for backward (``saved_tensors``), the live-bytes tracker by category and phase (``tracker``) and the
step's report (``report``). Imports go downward: report → saved_tensors → tracker → tensor_bytes."""
