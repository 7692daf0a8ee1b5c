"""Labelled synthetic rows drawn from the public schema alone, and the surrogate expert trained on them.

As in the paper, a `make_classification`-style latent model (class_sep 7) is mapped into the
schema's ranges and categories, with 10 % of the entries of each nullable column missing (a column
the schema declares non-nullable never is, as in the client's data). A number's marginal spreads
over its magnitudes, not only over its range (see `spread_over_magnitudes`). The provider never sees
the client's data, so connectors are trained on these rows, and a surrogate expert stands in for
the client's expert during training.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch
from scipy.stats import rankdata
from sklearn.datasets import make_classification
from torch import nn

from protocol.encoding import FeatureEncoder
from protocol.expert_spec import ExpertMLP, ExpertSpec, build_expert
from protocol.schema import PublicSchema
from protocol.seeding import generator, init_parameters


def spread_over_magnitudes(u: np.ndarray, lo: float, hi: float, resolution: float, log_share: float = 0.5) -> np.ndarray:
    """Maps quantiles `u` in (0, 1) into [lo, hi]: a mixture of uniform and log-uniform distance from `lo`.

    Public bounds are generous (a total bill "0 to 20,000 dollars"), so a uniform draw over them
    almost always has the range's largest digit count, while real values sit anywhere below. An
    encoder trained on such numbers learns "the long number is the total" instead of reading the
    field's name, and misreads the real table (measured: telco's total charges). Half the mass on a
    log scale of the distance from `lo` (down to the column's resolution) makes every digit count
    common. The map is the mixture's inverse CDF, so it is monotone and keeps the latent model's
    ranking, hence its link to the label.
    """
    span = float(hi - lo)
    if span <= 0:
        return np.full_like(u, float(lo), dtype=np.float64)
    scale = span / max(resolution, 1e-12)
    if scale <= 10:  # one or two digit counts: nothing to spread
        return lo + u * span
    grid = np.concatenate([[0.0], np.geomspace(0.1 / scale, 1.0, 4096)])  # distance from lo, as a share of the span
    cdf_log = np.log1p(grid * scale) / np.log1p(scale)  # log-uniform distance (shifted by one resolution step)
    cdf = (1 - log_share) * grid + log_share * cdf_log
    return lo + span * np.interp(u, cdf, grid)


def synthesize(schema: PublicSchema, n: int = 10_000, seed: int = 0, class_sep: float = 7.0, missing_rate: float = 0.1) -> tuple[pd.DataFrame, np.ndarray]:
    """Returns (rows with the schema's feature columns, label indices)."""
    rng = np.random.default_rng(seed)
    n_cols, n_classes = len(schema.columns), schema.label.num_classes
    n_feat = max(n_cols, 2)
    z, y = make_classification(
        n_samples=n, n_features=n_feat, n_informative=n_feat, n_redundant=0, n_repeated=0,
        n_classes=n_classes, n_clusters_per_class=1, class_sep=class_sep, flip_y=0.01,
        shuffle=True, random_state=seed,
    )
    data: dict[str, object] = {}
    for i, col in enumerate(schema.columns):
        u = (rankdata(z[:, i]) - 0.5) / n  # the latent column's quantiles
        if col.is_numeric:
            decimals = col.printed_decimals
            v = np.round(spread_over_magnitudes(u, col.min, col.max, 10.0 ** -decimals), decimals)
            if col.type == "int":
                v = v.astype(np.int64)
            vals = pd.Series(v, dtype="float64" if col.type == "float" or col.nullable else "int64")
            if col.nullable:
                vals = vals.astype("float64")
                vals[rng.random(n) < missing_rate] = np.nan
        else:
            levels = list(col.levels)
            order = rng.permutation(len(levels))  # which latent quantile maps to which level
            idx = np.minimum((u * len(levels)).astype(int), len(levels) - 1)
            vals = pd.Series([levels[order[j]] for j in idx], dtype=object)
            if col.nullable:
                vals[rng.random(n) < missing_rate] = None
        data[col.name] = vals
    return pd.DataFrame(data), y.astype(np.int64)


def train_surrogate(schema: PublicSchema, x: np.ndarray, y: np.ndarray, *, epochs: int = 10, seed: int = 0, batch_size: int = 128) -> ExpertMLP:
    """Non-private surrogate expert (synthetic data has nothing to protect) with the paper's MLP."""
    spec = ExpertSpec(input_dim=FeatureEncoder(schema).dim, num_classes=schema.label.num_classes, schema_digest=schema.digest)
    gen = generator(seed)
    model = init_parameters(build_expert(spec), gen)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    xt, yt = torch.as_tensor(x, dtype=torch.float32), torch.as_tensor(y)
    model.train()
    for _ in range(epochs):
        perm = torch.randperm(len(xt), generator=gen)
        for s in range(0, len(xt), batch_size):
            b = perm[s:s + batch_size]
            opt.zero_grad()
            nn.functional.cross_entropy(model(xt[b]), yt[b]).backward()
            opt.step()
    model.eval()
    model.requires_grad_(False)
    return model
