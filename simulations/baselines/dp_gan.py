"""A DP-CTGAN-style generator: a tabular GAN whose discriminator trains with DP-SGD through Opacus.

Why this family and not PATE-GAN (the paper's choice): the expert trains with DP-SGD under Opacus'
RDP accountant, so a GAN trained the same way spends its (ε, δ) under exactly the same accountant,
neighbouring relation (add/remove one record) and Poisson sampling, and its statement is recomputed
by the same `protocol.dp.compute_epsilon`. PATE-GAN's guarantee rests on a data-dependent
moments accountant over teacher votes, which published re-implementations have repeatedly got
wrong (Ganev et al. 2024, "The Elusive Pursuit of Reproducing PATE-GAN"), and its teachers each
see a 1/k-th of tables that here hold 1-8 thousand rows.

What is kept from CTGAN (Xu et al. 2019) and its DP variant (Fang et al. 2022): one softmax head
per column sampled with straight-through Gumbel-softmax, CTGAN's discriminator shape (two hidden
LeakyReLU(0.2) layers), Adam with β = (0.5, 0.9), a non-saturating cross-entropy loss as DP-CTGAN
uses (the gradient penalty of WGAN-GP needs double backward, which per-sample clipping does not
support). CTGAN's dropout 0.5 in the discriminator goes with its PacGAN packing of 10 rows; with
one row per input it kept the discriminator at chance and the generator collapsed even without DP
noise (measured), so it is left out. What is dropped,
because it reads the private data outside the accounting: CTGAN's mode-specific normalization
(a Gaussian mixture fitted to each numeric column) and its training-by-sampling conditional vector
(drawn from category frequencies). Columns use `discretize.TableDomain` instead (numeric columns
one-hot over the schema's public bins).

Privacy: only the discriminator touches real rows. Each step it sees a Poisson batch of real rows and a
fixed number (the expected batch size) of generated ones; every row's gradient is clipped and
Gaussian noise is added once (Opacus), so one real record moves the sum by at most the clipping
norm. The generator learns only from the privatized discriminator (post-processing).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch
from torch import nn
from torch.nn import functional as F

from protocol.dp import compute_epsilon, noise_for_epsilon
from protocol.errors import BudgetError
from protocol.schema import PublicSchema
from protocol.seeding import generator, init_parameters
from simulations.baselines.discretize import TableDomain
from simulations.baselines.mst import SynthesisResult, SynthesisStatement


@dataclass(frozen=True)
class GANConfig:
    """Sizes of one DP-GAN run: `steps` discriminator steps on Poisson batches of `batch_size` expected rows."""

    bins: int = 16
    steps: int = 1000
    batch_size: int = 256
    noise_dim: int = 64
    hidden: int = 128
    lr: float = 1e-3
    max_grad_norm: float = 1.0
    tau: float = 0.2


class Generator(nn.Module):
    """Noise → one straight-through Gumbel-softmax one-hot per attribute."""

    def __init__(self, noise_dim: int, hidden: int, sizes: tuple[int, ...], tau: float):
        super().__init__()
        self.sizes, self.tau, self.noise_dim = sizes, tau, noise_dim
        self.body = nn.Sequential(nn.Linear(noise_dim, hidden), nn.LayerNorm(hidden), nn.ReLU(),
                                  nn.Linear(hidden, hidden), nn.LayerNorm(hidden), nn.ReLU(), nn.Linear(hidden, sum(sizes)))

    def logits(self, z: torch.Tensor) -> list[torch.Tensor]:
        return list(torch.split(self.body(z), list(self.sizes), dim=-1))

    def forward(self, z: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        parts = []
        for lg in self.logits(z):
            u = torch.rand(lg.shape, generator=gen).clamp_(1e-10, 1 - 1e-10)
            soft = F.softmax((lg - torch.log(-torch.log(u))) / self.tau, dim=-1)
            hard = F.one_hot(soft.argmax(-1), lg.shape[-1]).to(soft.dtype)
            parts.append(hard - soft.detach() + soft)
        return torch.cat(parts, dim=-1)


def discriminator(width: int, hidden: int) -> nn.Module:
    return nn.Sequential(nn.Linear(width, hidden), nn.LeakyReLU(0.2), nn.Linear(hidden, hidden), nn.LeakyReLU(0.2), nn.Linear(hidden, 1))


def one_hot(codes: np.ndarray, sizes: tuple[int, ...]) -> torch.Tensor:
    return torch.cat([F.one_hot(torch.as_tensor(codes[:, j]), n).float() for j, n in enumerate(sizes)], dim=-1)


class DPGAN:
    """Fits on a private table with DP-SGD and returns a synthetic one at (ε, δ); see the module docstring."""

    def __init__(self, schema: PublicSchema, config: GANConfig = GANConfig()):
        self.schema, self.config = schema, config
        self.domain = TableDomain(schema, bins=config.bins)

    def fit_sample(self, table: pd.DataFrame, epsilon: float, delta: float, n_rows: int | None = None, seed: int = 0,
                   progress: bool = False) -> SynthesisResult:
        from opacus import PrivacyEngine
        from torch.utils.data import DataLoader, TensorDataset

        cfg, sizes = self.config, self.domain.sizes
        real = one_hot(self.domain.encode(table), sizes)
        n = len(real)
        gen = generator(seed)
        g_net = init_parameters(Generator(cfg.noise_dim, cfg.hidden, sizes, cfg.tau), gen)
        d_net = init_parameters(discriminator(real.shape[1], cfg.hidden), gen)
        opt_g = torch.optim.Adam(g_net.parameters(), lr=cfg.lr, betas=(0.5, 0.9))
        opt_d = torch.optim.Adam(d_net.parameters(), lr=cfg.lr, betas=(0.5, 0.9))
        loader = DataLoader(TensorDataset(real), batch_size=min(cfg.batch_size, n), shuffle=True, generator=gen)
        sample_rate = 1 / len(loader)  # what Opacus' Poisson loader will use
        noise = noise_for_epsilon(epsilon, delta, sample_rate, cfg.steps, "rdp")
        with warnings.catch_warnings(), torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)  # Opacus draws its Poisson batches and noise from torch's global generator (forked here)
            warnings.filterwarnings("ignore", message=".*Secure RNG.*")
            warnings.filterwarnings("ignore", message="Full backward hook is firing", category=UserWarning)
            engine = PrivacyEngine(accountant="rdp")
            # Ghost clipping: the same per-sample clipping and noise as hooks mode, without materialising per-sample gradients.
            d_private, dp_opt, criterion, dp_loader = engine.make_private(
                module=d_net, optimizer=opt_d, data_loader=loader, criterion=nn.BCEWithLogitsLoss(), noise_multiplier=noise,
                max_grad_norm=cfg.max_grad_norm, poisson_sampling=True, grad_sample_mode="ghost")
            if float(dp_loader.sample_rate) != sample_rate:
                raise BudgetError(f"DP-GAN: Opacus samples at rate {dp_loader.sample_rate}, the noise was calibrated for {sample_rate}")
            steps = self._train(g_net, d_private, dp_opt, criterion, opt_g, dp_loader, gen, progress)
            achieved = float(engine.get_epsilon(delta))
        noise, rate = float(dp_opt.noise_multiplier), float(dp_loader.sample_rate)
        recomputed = compute_epsilon(noise, rate, steps, float(delta), "rdp")
        if not achieved <= epsilon or recomputed != achieved:
            raise BudgetError(f"DP-GAN: achieved ε={achieved:.4f}, recomputed {recomputed:.4f}, target {epsilon:g}")
        rows = self.sample(g_net, n if n_rows is None else int(n_rows), np.random.default_rng(seed))
        details = {"mechanism": "dp-sgd", "noise_multiplier": noise, "sample_rate": rate, "steps": steps,
                   "max_grad_norm": cfg.max_grad_norm, "accountant": "rdp (opacus)", "bins": cfg.bins}
        return SynthesisResult(rows, SynthesisStatement("dp_gan", achieved, float(delta), float(epsilon), details))

    def _train(self, g_net, d_private, dp_opt, criterion, opt_g, dp_loader, gen, progress: bool) -> int:
        from tqdm.auto import tqdm

        cfg = self.config
        n_fake = cfg.batch_size  # fixed, not the private batch's size: the fakes' share of the sum must not depend on it
        bce = nn.BCEWithLogitsLoss()
        steps = 0
        bar = tqdm(total=cfg.steps, desc="DP-GAN", unit="step", disable=not progress, leave=False)
        while steps < cfg.steps:
            for (xb,) in dp_loader:
                if steps == cfg.steps:
                    break
                fake = g_net(torch.randn(n_fake, cfg.noise_dim, generator=gen), gen)
                dp_opt.zero_grad(set_to_none=True)
                out = d_private(torch.cat([xb, fake.detach()]))
                target = torch.cat([torch.ones(len(xb)), torch.zeros(n_fake)])
                criterion(out.squeeze(-1), target).backward()
                dp_opt.step()
                steps += 1
                d_private.disable_hooks()  # the generator's step needs no per-sample gradients of D
                opt_g.zero_grad(set_to_none=True)
                fake = g_net(torch.randn(n_fake, cfg.noise_dim, generator=gen), gen)
                bce(d_private(fake).squeeze(-1), torch.ones(n_fake)).backward()
                opt_g.step()
                d_private.enable_hooks()
                bar.update()
        bar.close()
        dp_opt.zero_grad(set_to_none=True)
        return steps

    @torch.no_grad()
    def sample(self, g_net: Generator, n: int, rng: np.random.Generator) -> pd.DataFrame:
        g_net.eval()
        gen = generator(int(rng.integers(2**31)))
        codes = []
        for start in range(0, n, 4096):
            z = torch.randn(min(4096, n - start), g_net.noise_dim, generator=gen)
            draws = [(lg - torch.log(-torch.log(torch.rand(lg.shape, generator=gen).clamp_(1e-10, 1 - 1e-10)))).argmax(-1)
                     for lg in g_net.logits(z)]  # Gumbel-max: one categorical draw per column
            codes.append(torch.stack(draws, dim=-1))
        return self.domain.decode(torch.cat(codes).numpy() if codes else np.zeros((0, len(g_net.sizes)), dtype=np.int64), rng)


__all__ = ["DPGAN", "GANConfig"]
