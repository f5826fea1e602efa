"""Evaluation of a trained model: perplexity and letter-scored multiple choice for causal LMs
(``causal_lm``), continuation choice (``continuation``), the encoder workloads' metrics (``encoder``,
``classification_metrics``)."""
