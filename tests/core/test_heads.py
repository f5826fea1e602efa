"""The mean-pooling RoBERTa classifier (``velora_core/models/heads.py``): it reads the mean of the real tokens
only, keeps transformers' module names and weights, and refuses a checkpoint of another model type."""

from __future__ import annotations

import pytest
import torch
from transformers import BertConfig, BertForSequenceClassification, RobertaForSequenceClassification

from velora_core.contract.presets.model_shapes import MODEL_PRESETS
from velora_core.models.heads import RobertaMeanPoolForSequenceClassification, masked_mean
from velora_core.models.loading import ModelSource, load_causal_lm
from velora_core.models.preset_configs import preset_config


def _config(num_labels: int = 3):
    config = preset_config(MODEL_PRESETS["roberta-stdlib"])
    config.num_labels = num_labels
    return config


def _model() -> RobertaMeanPoolForSequenceClassification:
    torch.manual_seed(0)
    return RobertaMeanPoolForSequenceClassification.from_config(_config()).eval()


def test_masked_mean_averages_the_unmasked_positions_only():
    hidden = torch.randn(2, 5, 4)
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]])
    pooled = masked_mean(hidden, mask)
    assert torch.allclose(pooled[0], hidden[0, :3].mean(0)) and torch.allclose(pooled[1], hidden[1].mean(0))
    assert torch.allclose(masked_mean(hidden, None), hidden.mean(1))


def test_padding_changes_nothing_and_the_head_reads_the_mean_of_the_real_tokens():
    model = _model()
    ids = torch.randint(3, 259, (2, 12), generator=torch.Generator().manual_seed(1))
    mask = torch.ones_like(ids)
    mask[1, 7:] = 0  # the second example has 7 real tokens
    logits = model(input_ids=ids, attention_mask=mask).logits
    # More padding, with other pad ids under the zero mask, gives the same logits.
    junk = torch.randint(3, 259, (2, 6), generator=torch.Generator().manual_seed(2))
    padded = torch.cat([torch.where(mask.bool(), ids, 5), junk], dim=1)
    padded_mask = torch.cat([mask, torch.zeros_like(junk)], dim=1)
    assert torch.allclose(model(input_ids=padded, attention_mask=padded_mask).logits, logits, atol=1e-5)
    # The second example alone, unpadded, is scored the same: its padding was never read.
    alone = model(input_ids=ids[1:, :7], attention_mask=mask[1:, :7]).logits
    assert torch.allclose(alone, logits[1:], atol=1e-5)
    # The head's input is the mean of the encoder's outputs over the real tokens, not the first one's.
    with torch.no_grad():
        hidden = model.roberta(input_ids=ids[1:, :7]).last_hidden_state
        expected = model.classifier(hidden.mean(1, keepdim=True))
        first = model.classifier(hidden[:, :1])
    assert torch.allclose(alone, expected, atol=1e-5) and not torch.allclose(alone, first, atol=1e-3)


def test_loss_is_transformers_own_for_classes_and_for_a_regression():
    model = _model()
    ids = torch.randint(3, 259, (4, 9), generator=torch.Generator().manual_seed(3))
    labels = torch.tensor([0, 2, 1, 2])
    out = model(input_ids=ids, attention_mask=torch.ones_like(ids), labels=labels)
    assert torch.allclose(out.loss, torch.nn.functional.cross_entropy(out.logits, labels))
    config = _config(num_labels=1)
    config.problem_type = "regression"
    regression = RobertaMeanPoolForSequenceClassification.from_config(config)
    scores = torch.tensor([0.5, 1.0, 2.0, 4.0])
    out = regression(input_ids=ids, labels=scores)
    assert torch.allclose(out.loss, torch.nn.functional.mse_loss(out.logits.squeeze(), scores))


def test_a_roberta_checkpoint_loads_with_every_weight_and_name(tmp_path):
    torch.manual_seed(0)
    saved = RobertaForSequenceClassification(_config())
    saved.save_pretrained(tmp_path)
    source = ModelSource(path=str(tmp_path), workload="sequence-classification", pooling="mean")
    loaded = load_causal_lm(source)
    assert type(loaded) is RobertaMeanPoolForSequenceClassification
    expected = saved.state_dict()
    assert loaded.state_dict().keys() == expected.keys()
    assert all(torch.equal(v, expected[k]) for k, v in loaded.state_dict().items())
    cls = load_causal_lm(ModelSource(path=str(tmp_path), workload="sequence-classification"))
    assert type(cls) is RobertaForSequenceClassification  # pooling 'cls': transformers' own class


def test_another_model_type_is_refused_with_its_name(tmp_path):
    config = BertConfig(
        hidden_size=32, intermediate_size=64, num_attention_heads=2, num_hidden_layers=1, vocab_size=64
    )
    BertForSequenceClassification(config).save_pretrained(tmp_path)
    source = ModelSource(path=str(tmp_path), workload="sequence-classification", pooling="mean")
    with pytest.raises(ValueError, match=r"implemented for roberta models, but .* is a 'bert' model"):
        load_causal_lm(source)
