"""Stage 2 of connector training: the expert decoder learns to make the frozen LLM say what the expert says.

Ground-truth synthetic features go through the surrogate expert; the decoder turns its class
probabilities into slot states at layer `k`, and is trained with soft cross-entropy between the
LLM's verbalizer read-out and those probabilities. Each step runs only the layers above `k`, and
only over the slots and the positions after them, against the question's cached keys and values
(`slot_pass`): the question itself never runs again. One decoder is trained per candidate `k`, and
the candidate the validation questions agree with best is kept.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from protocol.seeding import init_parameters
from provider_party.model.connectors import ConnectorConfig, ExpertDecoder
from provider_party.model.llamdex_model import LlamdexModel
from provider_party.model.slot_pass import slot_logits
from provider_party.model.training_data import DecoderBatch


def augment(logits: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Expert outputs the decoder must transmit: tempered surrogate outputs and uniform simplex draws.

    A surrogate trained on well-separated synthetic data is almost always confident, while real
    (and DP) experts often are not; the decoder must carry any probability vector faithfully.
    """
    B, C = logits.shape
    temp = torch.exp(torch.empty(B, 1).uniform_(math.log(0.5), math.log(8.0), generator=gen))
    p = (logits / temp).softmax(-1)
    dirichlet = -torch.log(torch.rand(B, C, generator=gen).clamp_min(1e-9))
    uniform = dirichlet / dirichlet.sum(-1, keepdim=True)
    pick = torch.rand(B, 1, generator=gen) < 0.5
    return torch.where(pick, uniform, p)


def _init_norm_scale(decoder: ExpertDecoder, cache: list[DecoderBatch], k: int) -> None:
    """Starts the output LayerNorm at the typical scale of the residual stream at layer k."""
    h = cache[0][0].entering[k]
    rms = h.float().pow(2).mean(-1).sqrt().median()
    with torch.no_grad():
        decoder.norm.weight.fill_(float(rms))


def _slot_logits(model: LlamdexModel, decoder: ExpertDecoder, ctx, k: int, probs: torch.Tensor) -> torch.Tensor:
    return slot_logits(model.lm, ctx, k, decoder(probs), model.verbalizer_ids)


def train_decoder(model: LlamdexModel, config: ConnectorConfig, cache: list[DecoderBatch], *, epochs: int, lr: float, seed: int,
                  progress: bool = False) -> ExpertDecoder:
    gen = torch.Generator().manual_seed(seed)
    decoder = ExpertDecoder(model.schema.label.num_classes, config.hidden_size, config.num_tokens, config.decoder_ffn)
    init_parameters(decoder, gen)
    k = config.inject_layer
    _init_norm_scale(decoder, cache, k)
    opt = torch.optim.AdamW(decoder.parameters(), lr=lr)
    gen = torch.Generator().manual_seed(seed + 1)
    total = epochs * len(cache)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=max(total, 1), pct_start=0.15)
    bar = tqdm(total=total, desc=f"stage 2: decoder k={k}", disable=not progress, leave=False)
    decoder.train()
    for _ in range(epochs):
        for ci in torch.randperm(len(cache), generator=gen).tolist():
            ctx, logits = cache[ci]
            target = augment(logits, gen)
            loss = F.cross_entropy(_slot_logits(model, decoder, ctx, k, target), target)
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            bar.update(1)
            bar.set_postfix(loss=f"{loss.item():.4f}")
    bar.close()
    return decoder.eval().requires_grad_(False)


@torch.no_grad()
def evaluate_decoder(model: LlamdexModel, config: ConnectorConfig, decoder: ExpertDecoder, cache: list[DecoderBatch]) -> dict:
    """Agreement of the LLM's answer with the surrogate expert's, and their KL, on validation questions."""
    agree, kls, n = 0, [], 0
    gen = torch.Generator().manual_seed(123)
    k = config.inject_layer
    for ctx, logits in cache:
        for target in (logits.softmax(-1), augment(logits, gen)):
            out = _slot_logits(model, decoder, ctx, k, target)
            agree += int((out.argmax(-1) == target.argmax(-1)).sum())
            kls.append(float(F.kl_div(out.log_softmax(-1), target, reduction="batchmean")))
            n += len(target)
    return {"agreement": agree / max(n, 1), "kl": float(np.mean(kls)), "n": n}


__all__ = ["DecoderBatch", "augment", "evaluate_decoder", "train_decoder"]
