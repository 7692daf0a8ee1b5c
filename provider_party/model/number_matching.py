"""Which stated number belongs to which numeric column: one assignment per question, not one guess per column.

The expert encoder scores, for every numeric column, each number the question states and a "nothing
stated" option. Read column by column, two columns can take the same number (the day's and the
evening's minutes both take "200.1" when the question says "200.1 in the evening"), and the second
column then loses its own value. A number stated once is one field's value, so the numbers are
assigned jointly: the assignment of numbers to columns (or to "nothing stated") with the highest
total score in which each stated number goes to at most one column, found exactly by the Hungarian
algorithm (`scipy.optimize.linear_sum_assignment`). A number may also go to no column at all (a
question can state numbers the schema has no field for), and a column whose best number is taken
keeps "nothing stated" unless another number scores above that option for it. Nothing is learned
or tuned here: on questions where no two columns want the same number, the result is the
column-by-column reading.
"""

from __future__ import annotations

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment

# Far below every real pointer score: an option a column cannot take.
_FORBIDDEN = -1e9
# Far above every real pointer score (they are O(10)), far below -_FORBIDDEN: with `claim_all`, any number beats "nothing stated".
_CLAIM = 1e6


def match_numbers(scores: torch.Tensor, is_number: torch.Tensor, claim_all: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """The numbers' assignment to numeric columns, per question.

    scores (B, N, T + 1): pointer scores of N numeric columns over T positions, the last entry "nothing stated";
    is_number (B, T): the positions that end a stated number.
    claim_all: assume every stated number is some column's value (true of every training question, whose
    asides state no numbers), so as many numbers as there are columns are given out before "nothing stated"
    is considered. It rescues a value whose wording training never showed, and hands a number the schema
    has no field for ("my 2nd question today") to a column the question leaves out. Off by default; measured
    in `scripts/number_decoding.py`.

    Returns (position, missing): position (B, N) long, the chosen position (0 where "nothing stated" is
    chosen); missing (B, N) float, a logit that is positive exactly where "nothing stated" is chosen (its
    margin over the column's best number still free, or over the number it was given).
    """
    B, N, _ = scores.shape
    position = np.zeros((B, N), dtype=np.int64)
    missing = np.ones((B, N), dtype=np.float32)
    s = scores.detach().float().cpu().numpy()
    numbers = is_number.detach().cpu().numpy()
    for b in range(B if N else 0):
        pos = np.flatnonzero(numbers[b])
        if pos.size == 0:
            continue
        stated = s[b][:, pos]                                   # (N, P)
        nothing = s[b][:, -1]                                   # (N,)
        options = np.full((N, pos.size + N), _FORBIDDEN)        # numbers, then one "nothing stated" per column
        options[:, :pos.size] = stated + (_CLAIM if claim_all else 0.0)
        options[np.arange(N), pos.size + np.arange(N)] = nothing
        cols, choice = linear_sum_assignment(options, maximize=True)
        taken = np.zeros(pos.size, dtype=bool)
        taken[choice[choice < pos.size]] = True
        for n, c in zip(cols, choice):
            if c < pos.size:
                position[b, n] = pos[c]
                missing[b, n] = min(nothing[n] - stated[n, c], -1e-3) if claim_all else nothing[n] - stated[n, c]
            else:
                free = stated[n, ~taken]
                margin = float(nothing[n] - free.max()) if free.size else 1.0
                missing[b, n] = max(margin, 1e-3)
    return torch.from_numpy(position).to(scores.device), torch.from_numpy(missing).to(scores.device)


__all__ = ["match_numbers"]
