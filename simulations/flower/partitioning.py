"""How the clients of one table split it: IID, or non-IID by label with a Dirichlet prior (Hsu et al. 2019), seeded.

Every client computes the same partition from the same seed and keeps only its own part, as a
simulation of owners who each hold some rows of a shared population. Dirichlet(α) draws, for every
class, how its rows spread over the clients: α → ∞ approaches IID, α ≤ 0.5 leaves most clients with
mostly one class. A draw that leaves a client fewer than `min_size` rows is redrawn (bounded); a
scenario that cannot satisfy it is refused with the numbers. Each part is then split into the client's
training rows and its held-out rows (stratified when every class has two rows or more).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from simulations.flower.scenario import ScenarioError

MIN_PART_ROWS = 10      # a client needs training rows and held-out rows
DIRICHLET_TRIES = 200


def iid_partition(n_rows: int, n_parts: int, seed: int) -> list[np.ndarray]:
    """Row indices of `n_parts` parts of nearly equal size, shuffled with `seed`."""
    order = np.random.default_rng(seed).permutation(n_rows)
    return [np.sort(p) for p in np.array_split(order, n_parts)]


def dirichlet_partition(labels: np.ndarray, n_parts: int, alpha: float, seed: int, min_size: int = MIN_PART_ROWS) -> list[np.ndarray]:
    """Row indices per part: for each class, proportions over the parts drawn from Dirichlet(α, ..., α)."""
    labels = np.asarray(labels)
    rng = np.random.default_rng(seed)
    classes = np.unique(labels)
    for _ in range(DIRICHLET_TRIES):
        parts: list[list[int]] = [[] for _ in range(n_parts)]
        for c in classes:
            rows = rng.permutation(np.flatnonzero(labels == c))
            cuts = (np.cumsum(rng.dirichlet(np.full(n_parts, alpha))) * len(rows)).astype(int)[:-1]
            for k, chunk in enumerate(np.split(rows, cuts)):
                parts[k].extend(chunk.tolist())
        if min(len(p) for p in parts) >= min_size:
            return [np.sort(np.array(p, dtype=np.int64)) for p in parts]
    raise ScenarioError("BAD_RUN_CONFIG", f"Dirichlet(alpha={alpha:g}) over {n_parts} clients of a table of {len(labels)} rows left some client "
                        f"below {min_size} rows in {DIRICHLET_TRIES} draws; raise 'alpha', lower 'clients', or use partition='iid'",
                        rule="partition")


def client_partition(df: pd.DataFrame, label: str, part: int, n_parts: int, scheme: str, alpha: float, seed: int) -> pd.DataFrame:
    """This client's rows of the table (a fresh 0..n-1 index)."""
    if len(df) < n_parts * MIN_PART_ROWS:
        raise ScenarioError("BAD_RUN_CONFIG", f"a table of {len(df)} rows cannot give {n_parts} clients {MIN_PART_ROWS} rows each; "
                            "lower 'clients' or use a larger table", rule="clients")
    if scheme == "iid":
        parts = iid_partition(len(df), n_parts, seed)
    else:
        parts = dirichlet_partition(df[label].to_numpy(), n_parts, alpha, seed)
    return df.iloc[parts[part]].reset_index(drop=True)


def split_heldout(df: pd.DataFrame, label: str, test_size: float, seed: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(training rows, held-out rows): stratified on the label when every class has two rows, else a plain seeded split."""
    from sklearn.model_selection import train_test_split

    counts = df[label].value_counts()
    n_test = max(1, int(round(test_size * len(df))))
    stratify = df[label] if (counts >= 2).all() and n_test >= len(counts) else None
    return train_test_split(df, test_size=n_test, random_state=seed, stratify=stratify)


__all__ = ["MIN_PART_ROWS", "client_partition", "dirichlet_partition", "iid_partition", "split_heldout"]
