"""Classification heads beyond transformers' own: RoBERTa's head on the mean of the encoder's outputs.

A run's ``model.pooling`` (``contract/spec.py``) says what the sequence-classification head reads:
``cls`` is transformers' ``RobertaForSequenceClassification`` (the first token's output, ``<s>``),
``mean`` is :class:`RobertaMeanPoolForSequenceClassification` here. The subclass keeps every module
and its name (``roberta``, ``classifier.dense``, ``classifier.out_proj``), so a checkpoint loads into
it unchanged, peft's ``modules_to_save=["classifier"]`` still trains the head in full, 4-bit loading
still skips it, and VeLoRA, gradient checkpointing and the memory tracker see the same layers. Only
the forward differs: transformers' ``RobertaClassificationHead`` (unchanged) is given the mean of the
encoder's outputs over the real tokens (the attention mask) in place of the first token's output.
"""

from __future__ import annotations

from torch import Tensor
from transformers import PretrainedConfig, RobertaForSequenceClassification
from transformers.loss.loss_utils import ForSequenceClassificationLoss
from transformers.modeling_outputs import SequenceClassifierOutput

#: The ``model_type`` of the checkpoints the mean-pooling head can be built on.
MEAN_POOLING_MODEL_TYPES = ("roberta",)


def masked_mean(hidden: Tensor, attention_mask: Tensor | None) -> Tensor:
    """The mean of ``hidden`` (``(B, T, H)``) over the positions where ``attention_mask`` (``(B, T)``)
    is non-zero, one vector per example (``(B, H)``); over all positions when there is no mask."""
    if attention_mask is None:
        return hidden.mean(dim=1)
    weights = attention_mask.to(hidden.dtype).unsqueeze(-1)
    return (hidden * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1.0)


class RobertaMeanPoolForSequenceClassification(RobertaForSequenceClassification):
    """``RobertaForSequenceClassification`` whose head reads the masked mean of the encoder's outputs
    (see the module docstring); the loss is transformers' own for sequence classification."""

    @classmethod
    def from_config(cls, config: PretrainedConfig, **kwargs) -> RobertaMeanPoolForSequenceClassification:
        """As ``AutoModelForSequenceClassification.from_config`` (random weights; ``dtype``)."""
        _check_model_type(config.model_type, "the config")
        return cls._from_config(config, **kwargs)

    @classmethod
    def from_pretrained(cls, path, *args, **kwargs) -> RobertaMeanPoolForSequenceClassification:
        """As transformers' ``from_pretrained``, after checking the checkpoint is a RoBERTa: a
        concrete class would load another model type's weights under the wrong names, silently."""
        config_dict, _ = PretrainedConfig.get_config_dict(
            path, revision=kwargs.get("revision"), trust_remote_code=False
        )
        _check_model_type(config_dict.get("model_type"), repr(str(path)))
        return super().from_pretrained(path, *args, **kwargs)

    def forward(
        self,
        input_ids: Tensor | None = None,
        attention_mask: Tensor | None = None,
        token_type_ids: Tensor | None = None,
        position_ids: Tensor | None = None,
        inputs_embeds: Tensor | None = None,
        labels: Tensor | None = None,
        **kwargs,
    ) -> SequenceClassifierOutput:
        outputs = self.roberta(
            input_ids,
            attention_mask=attention_mask,
            token_type_ids=token_type_ids,
            position_ids=position_ids,
            inputs_embeds=inputs_embeds,
            return_dict=True,
            **kwargs,
        )
        pooled = masked_mean(outputs.last_hidden_state, attention_mask)
        logits = self.classifier(pooled.unsqueeze(1))  # the head reads position 0: the pooled vector
        loss = None if labels is None else ForSequenceClassificationLoss(labels, logits, self.config)
        return SequenceClassifierOutput(
            loss=loss, logits=logits, hidden_states=outputs.hidden_states, attentions=outputs.attentions
        )


def _check_model_type(model_type: str | None, what: str) -> None:
    if model_type not in MEAN_POOLING_MODEL_TYPES:
        raise ValueError(
            f"model.pooling='mean' is implemented for {', '.join(MEAN_POOLING_MODEL_TYPES)} models, but "
            f"{what} is a {model_type!r} model; use pooling 'cls' (transformers' own head)"
        )


__all__ = ["MEAN_POOLING_MODEL_TYPES", "RobertaMeanPoolForSequenceClassification", "masked_mean"]
