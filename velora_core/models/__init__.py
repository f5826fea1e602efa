"""Loading models and tokenizers: causal LMs, encoders and their heads from presets, the hub, local
folders or a base run's artifact (``loading``, ``heads``), and the tokenizers behind one protocol (``tokenizers``)."""
