"""Decoder training's slot pass: the upper layers over the slots and what follows, against cached question keys/values."""

from __future__ import annotations

import torch

from protocol.verbalizer import Verbalizer
from provider_party.model.frozen_lm import FrozenLM
from provider_party.model.prompting import PromptBuilder
from provider_party.model.slot_pass import full_pass, slot_logits
from provider_party.model.synthesis import synthesize


def test_slot_pass_equals_the_full_upper_pass(base_llm, titanic_schema):
    lm = FrozenLM(base_llm)
    rows, _ = synthesize(titanic_schema, n=40, seed=0)
    qs = Verbalizer(titanic_schema, seed=5).questions(rows.to_dict("records")[:3])
    pb = PromptBuilder(base_llm.tokenizer, titanic_schema)
    batch = pb.batch(qs, 4)  # rows of different lengths: left padding is exercised
    assert batch.attention_mask.sum(1).unique().numel() > 1
    kept, ctx = full_pass(lm, batch, [12], [22, 26])
    ref = lm.lower(batch, [12, 22, 26])
    assert torch.equal(kept[12], ref[12])
    slots = torch.randn(3, 4, base_llm.hidden_size, generator=torch.Generator().manual_seed(0)) * 2
    for k in (22, 26):
        h = ref[k].clone()
        h[:, batch.slot_slice] = slots
        with torch.no_grad():
            full = lm.upper(h, batch, k, pb.verbalizer_ids)
            short = slot_logits(lm, ctx, k, slots, pb.verbalizer_ids)
        torch.testing.assert_close(short, full, atol=5e-3, rtol=1e-4)  # the cached keys/values are float16


def test_slot_pass_carries_gradients_to_the_slot_states(base_llm, titanic_schema):
    lm = FrozenLM(base_llm)
    pb = PromptBuilder(base_llm.tokenizer, titanic_schema)
    batch = pb.batch(["A female passenger aged 29 in 1st class. Did this passenger survive the sinking of the Titanic?"], 4)
    _, ctx = full_pass(lm, batch, [], [24])
    slots = torch.zeros(1, 4, base_llm.hidden_size, requires_grad=True)
    slot_logits(lm, ctx, 24, slots, pb.verbalizer_ids).sum().backward()
    assert slots.grad is not None and slots.grad.abs().sum() > 0
    assert all(p.grad is None for p in base_llm.model.parameters())  # the base LLM stays frozen
