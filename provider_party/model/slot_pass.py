"""The upper layers over the slot and answer positions only, with the question's keys and values cached.

Decoder training runs layers `k..L` many times per question (epochs x candidate layers), but only
the slots (overwritten at layer `k`) and the positions after them (the assistant-turn opener and
the answer position) ever change: causal attention means the question's own states in every
layer are the same whatever the slots hold. So the question's keys and values in layers `k..L`
are recorded once, in the one frozen pass that also yields the encoder's layer-`j` states, and
each training step runs the upper layers on the ~10 changing positions, attending to the recorded
keys and values. For a 400-token question that is ~40x less work per step than the full upper pass,
and gives the same result (tested against `FrozenLM.upper`).

It drives the decoder layers through the same Llama-layout interface as `FrozenLM`, handing each
attention layer a small cache object with the recorded keys and values.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from provider_party.model.frozen_lm import FrozenLM
from provider_party.model.prompting import QueryBatch


def _hidden(output):
    return output[0] if isinstance(output, tuple) else output


class _Recorder:
    """Stands in for a KV cache in one full pass: keeps each layer's keys and values, changes nothing."""

    def __init__(self, layers: range, keep: int, dtype: torch.dtype):
        self.layers, self.keep, self.dtype = layers, keep, dtype
        self.kv: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}

    def update(self, k: torch.Tensor, v: torch.Tensor, layer_idx: int, *args, **kwargs) -> tuple[torch.Tensor, torch.Tensor]:
        if layer_idx in self.layers:
            self.kv[layer_idx] = (k[:, :, : self.keep].to(self.dtype), v[:, :, : self.keep].to(self.dtype))
        return k, v


class _Prefixed:
    """Stands in for a KV cache in a slot pass: puts the recorded prefix keys and values before the new ones."""

    def __init__(self, kv: dict[int, tuple[torch.Tensor, torch.Tensor]]):
        self.kv = kv

    def update(self, k: torch.Tensor, v: torch.Tensor, layer_idx: int, *args, **kwargs) -> tuple[torch.Tensor, torch.Tensor]:
        pk, pv = self.kv[layer_idx]
        return torch.cat([pk.to(k.dtype), k], 2), torch.cat([pv.to(v.dtype), v], 2)


@dataclass
class SlotContext:
    """What one batch's slot passes need: the states entering each candidate layer at the changing
    positions, the question's keys/values from the lowest candidate layer up, and the masks."""

    entering: dict[int, torch.Tensor]            # layer k -> (B, S, H) states entering k at the slots and after
    kv: dict[int, tuple[torch.Tensor, torch.Tensor]]  # layer -> (B, kv heads, P, head dim) keys, values (`kv_dtype`)
    attention_mask: torch.Tensor                 # (B, P + S) 1 for real tokens
    position_ids: torch.Tensor                   # (B, P + S)
    num_slots: int

    @property
    def prefix_len(self) -> int:
        return self.attention_mask.shape[1] - next(iter(self.entering.values())).shape[1]


@torch.no_grad()
def full_pass(lm: FrozenLM, batch: QueryBatch, keep_layers: list[int], candidates: list[int],
              kv_dtype: torch.dtype = torch.float16) -> tuple[dict[int, torch.Tensor], SlotContext]:
    """One pass over every layer of a slotted batch: the full states entering each of `keep_layers`,
    and the `SlotContext` for the slot passes of every candidate inject layer.

    `kv_dtype`: float16 halves the memory of the recorded keys and values (decoder training holds
    thousands of questions); float32 keeps the slot pass equal to `FrozenLM.upper` to float rounding."""
    start = batch.slot_slice.start
    lowest = min(candidates)
    rec = _Recorder(range(lowest, lm.num_layers), start, kv_dtype)
    h, inputs = lm.embed(batch.input_ids), lm.inputs(batch.attention_mask, batch.position_ids)
    kept: dict[int, torch.Tensor] = {}
    entering: dict[int, torch.Tensor] = {}
    for i, layer in enumerate(lm.inner.layers):
        if i in keep_layers:
            kept[i] = h
        if i in candidates:
            entering[i] = h[:, start:].clone()
        h = _hidden(layer(h, attention_mask=inputs.mask, position_ids=inputs.position_ids, position_embeddings=inputs.position_embeddings,
                          cache=rec if i >= lowest else None, use_cache=False))
    return kept, SlotContext(entering, rec.kv, batch.attention_mask, batch.position_ids, batch.num_slots)


def slot_logits(lm: FrozenLM, ctx: SlotContext, layer: int, slot_states: torch.Tensor, token_ids: list[int]) -> torch.Tensor:
    """Logits over `token_ids` at the answer position when `slot_states` (B, num_slots, H) enter layer `layer`."""
    h = ctx.entering[layer].clone().to(lm.dtype)
    h[:, : ctx.num_slots] = slot_states.to(h.dtype)
    P = ctx.prefix_len
    S = h.shape[1]
    dtype, device = lm.dtype, h.device
    keys_ok = ctx.attention_mask.bool()                                    # (B, P + S)
    causal = torch.ones(S, S, dtype=torch.bool, device=device).tril()
    allowed = torch.cat([keys_ok[:, None, :P].expand(-1, S, -1), causal[None] & keys_ok[:, None, P:]], -1)[:, None]
    mask = torch.zeros(allowed.shape, dtype=dtype, device=device).masked_fill(~allowed, torch.finfo(dtype).min)
    pos = ctx.position_ids[:, P:]
    probe = torch.empty(0, dtype=dtype, device=device)
    rotary = lm.inner.rotary_emb(probe, position_ids=pos)
    cache = _Prefixed(ctx.kv)
    for layer_module in lm.inner.layers[layer:]:
        h = _hidden(layer_module(h, attention_mask=mask, position_ids=pos, position_embeddings=rotary, cache=cache, use_cache=False))
    return lm.readout(h, token_ids)


__all__ = ["SlotContext", "full_pass", "slot_logits"]
