"""Grammar-constrained greedy decoding with a KV cache and jump-forward, for batches of prompts.

Each row of a batch follows its own `TokenMachine`: a small state machine that says which tokens
are forced next (text the grammar fixes, such as a form's field names, fed without asking the
model) and which tokens the model may choose from (the grammar's allowed continuations). Every
decoding step feeds each row one chunk, the chosen token followed by whatever the grammar then
forces, so forced text costs one forward step per chunk rather than one per token (the
"jump-forward" of grammar-constrained decoders such as SGLang and llama.cpp). Rows are left-padded
inside each chunk, the KV cache holds the pads masked out, and each row keeps its own positions.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass, field
from typing import Protocol

import torch

from provider_party.model.base_llm import BaseLLM


def with_cache(model, cache) -> dict:
    """The keyword that hands a KV cache to `model.forward`: `cache` in transformers 5.24+, `past_key_values` before."""
    params = inspect.signature(model.forward).parameters
    return {"cache": cache} if "cache" in params else {"past_key_values": cache}


class TokenMachine(Protocol):
    def forced(self) -> list[int]:
        """Tokens the grammar fixes next (consumed by the call); may be empty."""

    def allowed(self) -> list[int] | None:
        """Token ids the model may choose next; None once the row is finished."""

    def feed(self, token: int) -> None:
        """The token chosen for this row."""


@dataclass
class DecodeStats:
    """Per row: model-chosen tokens and forced tokens; forward steps of the whole batch."""

    chosen: list[int] = field(default_factory=list)
    forced: list[int] = field(default_factory=list)
    steps: int = 0


class ChunkedDecoder:
    """Runs `TokenMachine`s over a base LLM (any Hugging Face causal LM with a KV cache)."""

    def __init__(self, base: BaseLLM):
        self.base = base

    @torch.inference_mode()
    def run(self, prompts: list[list[int]], machines: list[TokenMachine]) -> DecodeStats:
        from transformers import DynamicCache

        model, device = self.base.model, self.base.device
        pad = self.base.tokenizer.pad_token_id
        n = len(prompts)
        stats = DecodeStats(chosen=[0] * n, forced=[0] * n)
        cache = DynamicCache(config=model.config)
        chunks = []
        for p, m in zip(prompts, machines):
            f = m.forced()
            stats.forced[len(chunks)] += len(f)
            chunks.append(list(p) + f)
        next_pos = [0] * n
        mask = torch.zeros((n, 0), dtype=torch.long, device=device)
        while any(chunks):
            width = max(len(c) for c in chunks)
            ids = torch.full((n, width), pad, dtype=torch.long)
            step_mask = torch.zeros((n, width), dtype=torch.long)
            pos = torch.zeros((n, width), dtype=torch.long)
            for i, c in enumerate(chunks):
                if c:
                    ids[i, width - len(c):] = torch.tensor(c)
                    step_mask[i, width - len(c):] = 1
                    pos[i, width - len(c):] = torch.arange(next_pos[i], next_pos[i] + len(c))
                    next_pos[i] += len(c)
            mask = torch.cat([mask, step_mask.to(device)], dim=1)
            out = model(input_ids=ids.to(device), attention_mask=mask, position_ids=pos.to(device), use_cache=True, logits_to_keep=1,
                        **with_cache(model, cache))
            logits = out.logits[:, -1].float()
            stats.steps += 1
            fed = [bool(c) for c in chunks]
            chunks = [[] for _ in range(n)]
            for i, m in enumerate(machines):
                allowed = m.allowed() if fed[i] else None
                if not allowed:
                    continue
                token = allowed[int(logits[i, allowed].argmax())]
                m.feed(token)
                stats.chosen[i] += 1
                f = m.forced()
                stats.forced[i] += len(f)
                if m.allowed() is not None:   # a finished row needs no further step
                    chunks[i] = [token] + f
        return stats
