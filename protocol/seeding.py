"""Reproducible parameter initialisation without touching torch's global random state.

Services train on their own threads (a provider trains connectors while other threads answer
questions; a simulated client may train a DP expert in the same process). `torch.manual_seed`
would reseed the generator every thread shares, so one job's seed would decide another job's
random draws, DP noise included. Modules are therefore built and then re-drawn here from a private
`torch.Generator`, with PyTorch's own default distributions.
"""

from __future__ import annotations

import math

import torch
from torch import nn


def generator(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(int(seed))


def init_parameters(module: nn.Module, gen: torch.Generator) -> nn.Module:
    """Re-draws every parameter of `module` from `gen`, as the layers' own `reset_parameters` would.

    A module with parameters of its own (not inside a Linear, LayerNorm or Embedding) must define
    `reset_parameters(generator)`; anything else is refused rather than left at a global-RNG draw.
    """
    with torch.no_grad():
        for sub in module.modules():
            own = list(sub.named_parameters(recurse=False))
            if not own:
                continue
            if isinstance(sub, nn.Linear):
                nn.init.kaiming_uniform_(sub.weight, a=math.sqrt(5), generator=gen)
                if sub.bias is not None:
                    bound = 1 / math.sqrt(sub.in_features) if sub.in_features > 0 else 0.0
                    nn.init.uniform_(sub.bias, -bound, bound, generator=gen)
            elif isinstance(sub, nn.LayerNorm):
                if sub.weight is not None:
                    nn.init.ones_(sub.weight)
                if sub.bias is not None:
                    nn.init.zeros_(sub.bias)
            elif isinstance(sub, nn.Embedding):
                nn.init.normal_(sub.weight, generator=gen)
            elif hasattr(sub, "reset_parameters") and "generator" in sub.reset_parameters.__code__.co_varnames:
                sub.reset_parameters(generator=gen)
            else:
                names = ", ".join(n for n, _ in own)
                raise TypeError(f"{type(sub).__name__} holds parameters ({names}) but no reset_parameters(generator)")
    return module


__all__ = ["generator", "init_parameters"]
