"""Runs a frozen decoder-only LLM layer by layer, without touching the shared model.

Llamdex needs to stop a forward pass at layer `j` (the encoder reads the question there) and to
overwrite positions when it enters layer `k` (the expert's slots). Hooks or a swapped layer list
would do that by mutating the one base model that every tenant shares, so callers would have to
take turns. Instead this module calls the decoder layers itself, in order, with a mask and rotary
embeddings built once per batch: any number of threads may run passes at once, and a pass may
stop at any layer or change any position between two layers. It covers the Llama layout that
Llama, Mistral, Qwen2 and SmolLM share (`model.model.embed_tokens`, `.layers`, `.norm`,
`.rotary_emb`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

from provider_party.model.base_llm import BaseLLM


def _hidden(output):
    return output[0] if isinstance(output, tuple) else output


@dataclass(frozen=True)
class PassInputs:
    """What every layer of one batch's pass needs besides the hidden states (built once, read-only)."""

    mask: torch.Tensor | None              # (B, 1, L, L) additive: 0 where a query may attend, the dtype's min elsewhere;
                                           # None when no row is padded: plain causal attention (SDPA's is_causal kernels)
    position_ids: torch.Tensor             # (B, L)
    position_embeddings: tuple[torch.Tensor, torch.Tensor]


class FrozenLM:
    """Stateless access to a frozen causal LM: embed, run any range of layers, read the last position."""

    def __init__(self, base: BaseLLM):
        self.base = base
        self.inner = base.model.model
        for part in ("embed_tokens", "layers", "norm", "rotary_emb"):
            if not hasattr(self.inner, part):
                raise TypeError(f"{base.model_id}: the base model has no `model.{part}`; Llamdex runs Llama-layout decoders "
                                "(Llama, Mistral, Qwen2, SmolLM)")
        # SDPA applies causal masking itself when given no mask (is_causal); eager attention would attend everywhere
        self.causal_without_mask = getattr(base.model.config, "_attn_implementation", None) == "sdpa"

    @property
    def num_layers(self) -> int:
        return len(self.inner.layers)

    @property
    def dtype(self) -> torch.dtype:
        return self.inner.embed_tokens.weight.dtype

    def embed(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.inner.embed_tokens(input_ids)

    def inputs(self, attention_mask: torch.Tensor, position_ids: torch.Tensor) -> PassInputs:
        """The per-batch layer inputs: causal attention over the non-padding tokens, rotary embeddings."""
        L, dtype, device = attention_mask.shape[1], self.dtype, attention_mask.device
        mask = None   # no padding (one question, or equal lengths): causal attention needs no mask, and SDPA picks its fused kernels
        if not (self.causal_without_mask and bool(attention_mask.bool().all())):
            causal = torch.ones(L, L, dtype=torch.bool, device=device).tril()
            # every position also sees itself, so a padding row attends to its own token only and never to the slots
            allowed = (causal[None, None] & attention_mask.bool()[:, None, None, :]) | torch.eye(L, dtype=torch.bool, device=device)
            mask = torch.zeros(allowed.shape, dtype=dtype, device=device).masked_fill(~allowed, torch.finfo(dtype).min)
        probe = torch.empty(0, dtype=dtype, device=device)  # rotary embeddings only read its dtype and device
        return PassInputs(mask, position_ids, self.inner.rotary_emb(probe, position_ids=position_ids))

    def run(self, h: torch.Tensor, inputs: PassInputs, start: int, stop: int) -> torch.Tensor:
        """Hidden states entering layer `stop`, from those entering layer `start`."""
        for layer in self.inner.layers[start:stop]:
            h = _hidden(layer(h, attention_mask=inputs.mask, position_ids=inputs.position_ids,
                              position_embeddings=inputs.position_embeddings, use_cache=False))
        return h

    def readout(self, h: torch.Tensor, token_ids: list[int] | torch.Tensor) -> torch.Tensor:
        """Logits over `token_ids` at the last position of states that left the last layer."""
        last = self.inner.norm(h[:, -1])
        head = self.base.model.get_output_embeddings()
        logits = last @ head.weight[token_ids].T
        if getattr(head, "bias", None) is not None:
            logits = logits + head.bias[token_ids]
        return logits

    def lower(self, batch, layers: list[int]) -> dict[int, torch.Tensor]:
        """Hidden states entering layer l (HF `hidden_states[l]`) for each l, stopping after the deepest."""
        h, inputs = self.embed(batch.input_ids), self.inputs(batch.attention_mask, batch.position_ids)
        out, at = {}, 0
        for l in sorted(set(layers)):
            h = self.run(h, inputs, at, l)
            out[l], at = h, l
        return out

    def upper(self, hidden: torch.Tensor, batch, layer: int, token_ids: list[int]) -> torch.Tensor:
        """Runs layers `layer..end` on given hidden states and reads the last position."""
        inputs = self.inputs(batch.attention_mask, batch.position_ids)
        return self.readout(self.run(hidden.to(self.dtype), inputs, layer, self.num_layers), token_ids)

    def full(self, batch, token_ids: list[int], between: dict[int, Callable[[torch.Tensor], torch.Tensor]] | None = None) -> torch.Tensor:
        """One pass over every layer; `between[l](h)` may replace the states entering layer l."""
        h, inputs = self.embed(batch.input_ids), self.inputs(batch.attention_mask, batch.position_ids)
        at = 0
        for l in sorted(between or {}):
            h = between[l](self.run(h, inputs, at, l))
            at = l
        return self.readout(self.run(h, inputs, at, self.num_layers), token_ids)


__all__ = ["FrozenLM", "PassInputs"]
