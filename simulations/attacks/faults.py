"""Deliberately broken DP-SGD, to show that an audit catches what it is meant to catch.

`weakened_noise(factor)` makes every Opacus DP optimizer in this process add Gaussian noise with
`factor` times the noise multiplier it reports: the accountant, the DP statement and the claimed ε
are exactly those of a correct run, only the noise actually added is smaller, as in an
implementation bug. The patch is process-wide and lasts for the `with` block; it exists for tests
and for the privacy–utility report's `broken_dp` check, never for training an expert to upload.
"""

from __future__ import annotations

import contextlib
from typing import Iterator


@contextlib.contextmanager
def weakened_noise(factor: float = 0.1) -> Iterator[None]:
    """Within the block, DP-SGD adds noise with `factor` × the noise multiplier it claims."""
    from opacus.optimizers.optimizer import DPOptimizer
    from opacus.optimizers.optimizer_fast_gradient_clipping import DPOptimizerFastGradientClipping

    if not 0 <= factor < 1:
        raise ValueError(f"factor must be in [0, 1) to weaken the noise, got {factor}")
    classes = (DPOptimizer, DPOptimizerFastGradientClipping)
    originals = {cls: cls.__dict__["add_noise"] for cls in classes}

    def weakened(original):
        def add_noise(self) -> None:
            claimed = self.noise_multiplier
            self.noise_multiplier = claimed * factor
            try:
                original(self)
            finally:
                self.noise_multiplier = claimed
        return add_noise

    for cls, original in originals.items():
        cls.add_noise = weakened(original)
    try:
        yield
    finally:
        for cls, original in originals.items():
            cls.add_noise = original


__all__ = ["weakened_noise"]
