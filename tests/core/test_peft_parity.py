"""velora+lora gives the same gradients as peft's own VeLoRA variant for the same v."""

from __future__ import annotations

import copy

import torch
from peft import LoraConfig, VeloraConfig, get_peft_model
from transformers import LlamaForCausalLM

from velora_core.contract.method_configs import VeLoRAConfig
from velora_core.velora.layer import apply_velora

from .conftest import tiny_llama_config


def test_velora_lora_gradients_equal_peft_velora(token_batch):
    torch.manual_seed(0)
    base = LlamaForCausalLM(tiny_llama_config())
    lora = dict(
        r=4, lora_alpha=8, lora_dropout=0.0, target_modules=["v_proj", "down_proj"], init_lora_weights=False
    )

    torch.manual_seed(1)
    ours = get_peft_model(copy.deepcopy(base), LoraConfig(**lora))
    torch.manual_seed(1)
    theirs = get_peft_model(
        copy.deepcopy(base),
        LoraConfig(
            **lora, velora_config=VeloraConfig(num_groups=8, scale=0.1, init_type="batch_average_once")
        ),
    )
    wrapped = apply_velora(ours, VeLoRAConfig(num_groups=8, scale=0.1, init="batch_average_once"))
    assert len(wrapped) == 4

    ours.train()
    theirs.train()
    loss_ours = ours(**token_batch).loss
    loss_theirs = theirs(**token_batch).loss
    torch.testing.assert_close(loss_ours, loss_theirs)
    loss_ours.backward()
    loss_theirs.backward()

    # Both initialised v from the same first batch: the same vector.
    for name in wrapped:
        layer = ours.get_submodule(name.removesuffix(".lora_A.default"))
        peft_layer = theirs.get_submodule(name.removesuffix(".lora_A.default"))
        torch.testing.assert_close(
            layer.lora_A["default"].velora_v, peft_layer.lora_velora_embed["default"].to(torch.float32)
        )

    grads_ours = {n.replace(".base_layer", ""): p.grad for n, p in ours.named_parameters() if p.requires_grad}
    grads_theirs = {n: p.grad for n, p in theirs.named_parameters() if p.requires_grad}
    assert set(grads_ours) == set(grads_theirs) and len(grads_ours) == 8
    for name, grad in grads_theirs.items():
        torch.testing.assert_close(grads_ours[name], grad, rtol=1e-5, atol=1e-7, msg=name)
    # VeLoRA changed lora_A's gradient: it is not plain LoRA's.
    plain = get_peft_model(copy.deepcopy(base), LoraConfig(**lora))
    plain.load_state_dict(theirs.state_dict(), strict=False)
    plain(**token_batch).loss.backward()
    a_name = next(n for n in grads_theirs if "lora_A" in n)
    assert not torch.allclose(dict(plain.named_parameters())[a_name].grad, grads_theirs[a_name])
