"""A table as small integer codes, with bins drawn from the public schema alone, and back.

The synthesizers work on a discrete domain: every feature column and the label become one
attribute with a handful of levels. Categorical and boolean columns keep their levels; a numeric
column is cut into equal-width bins over the schema's public range `[min, max]` (one bin per
integer when an integer column has no more values than bins). Bin edges never come from the data:
a quantile would leak the private table outside the privacy accounting. A nullable column gets one
more level, "missing", last. Decoding draws a value uniformly inside its bin (rounded for integer
columns), so a synthetic row is a valid row of the schema.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from protocol.encoding import bool_level, is_missing
from protocol.schema import ColumnSpec, PublicSchema


@dataclass(frozen=True)
class Attribute:
    """One discrete attribute: a feature column (`column` set) or the label (`column` None)."""

    name: str
    column: ColumnSpec | None
    levels: tuple[str, ...]          # categorical levels, or the label's classes; empty for numeric
    edges: tuple[float, ...]         # numeric bin edges (len = bins + 1); empty otherwise
    integer_bins: bool = False       # one bin per integer value: edges are min, min+1, ..., max+1
    has_missing: bool = False

    @property
    def num_values(self) -> int:
        return len(self.levels) if not self.edges else len(self.edges) - 1

    @property
    def size(self) -> int:
        return self.num_values + int(self.has_missing)

    @property
    def missing_code(self) -> int | None:
        return self.num_values if self.has_missing else None


def _numeric_attribute(col: ColumnSpec, bins: int) -> Attribute:
    lo, hi = float(col.min), float(col.max)
    if col.type == "int" and hi - lo + 1 <= bins:
        edges = tuple(float(v) for v in np.arange(lo, hi + 2))
        return Attribute(col.name, col, (), edges, integer_bins=True, has_missing=col.nullable)
    edges = tuple(float(v) for v in np.linspace(lo, hi, bins + 1))
    return Attribute(col.name, col, (), edges, has_missing=col.nullable)


class TableDomain:
    """The discrete domain of a schema's table: its feature columns in schema order, then the label."""

    def __init__(self, schema: PublicSchema, bins: int = 16):
        if isinstance(bins, bool) or not isinstance(bins, int) or bins < 2:
            raise ValueError(f"bins must be an integer >= 2 (bins per numeric column), got {bins!r}")
        self.schema, self.bins = schema, bins
        attrs = []
        for col in schema.columns:
            if col.is_numeric:
                attrs.append(_numeric_attribute(col, bins))
            else:
                attrs.append(Attribute(col.name, col, tuple(col.levels), (), has_missing=col.nullable))
        attrs.append(Attribute(schema.label.name, None, tuple(schema.label.classes), ()))
        self.attributes: tuple[Attribute, ...] = tuple(attrs)

    @property
    def sizes(self) -> tuple[int, ...]:
        return tuple(a.size for a in self.attributes)

    @property
    def label_index(self) -> int:
        return len(self.attributes) - 1

    def encode(self, df: pd.DataFrame) -> np.ndarray:
        """Codes (n, d) of a validated table (`client_party.datasets.load_table` output)."""
        missing = [a.name for a in self.attributes if a.name not in df.columns]
        if missing:
            raise ValueError(f"table lacks the schema's columns {missing}; load it with client_party.datasets.load_table")
        out = np.zeros((len(df), len(self.attributes)), dtype=np.int64)
        for j, a in enumerate(self.attributes):
            out[:, j] = self._encode_column(a, df[a.name].to_numpy(dtype=object))
        return out

    def _encode_column(self, a: Attribute, values: np.ndarray) -> np.ndarray:
        codes = np.empty(len(values), dtype=np.int64)
        for i, v in enumerate(values):
            if is_missing(v):
                if a.missing_code is None:
                    raise ValueError(f"column {a.name!r}: missing value in a column that is not nullable")
                codes[i] = a.missing_code
            elif a.edges:
                x = float(np.clip(float(v), a.edges[0], a.edges[-1]))
                codes[i] = min(int(np.searchsorted(a.edges, x, side="right")) - 1, a.num_values - 1)
            else:
                s = bool_level(v) if (a.column is not None and a.column.type == "bool") else str(v)
                if s not in a.levels:
                    raise ValueError(f"column {a.name!r}: {v!r} is not one of {list(a.levels)}")
                codes[i] = a.levels.index(s)
        return codes

    def decode(self, codes: np.ndarray, rng: np.random.Generator) -> pd.DataFrame:
        """A table of the schema's columns and label from codes; numeric values drawn inside their bins."""
        codes = np.asarray(codes)
        if codes.ndim != 2 or codes.shape[1] != len(self.attributes):
            raise ValueError(f"codes must have shape (n, {len(self.attributes)}), got {codes.shape}")
        cols: dict[str, pd.Series] = {}
        for j, a in enumerate(self.attributes):
            c = codes[:, j]
            if (c < 0).any() or (c >= a.size).any():
                raise ValueError(f"column {a.name!r}: codes must lie in 0..{a.size - 1}")
            cols[a.name] = self._decode_column(a, c, rng)
        return pd.DataFrame(cols)

    def _decode_column(self, a: Attribute, c: np.ndarray, rng: np.random.Generator) -> pd.Series:
        missing = c == a.missing_code if a.has_missing else np.zeros(len(c), dtype=bool)
        if not a.edges:
            vals = np.array([a.levels[k] if not m else np.nan for k, m in zip(c, missing)], dtype=object)
            return pd.Series(vals, dtype=object)
        k = np.where(missing, 0, c)
        lo, hi = np.asarray(a.edges)[k], np.asarray(a.edges)[k + 1]
        col = a.column
        if a.integer_bins:
            x = lo.copy()
        else:
            step = 1.0 if col.type == "int" else (10.0 ** -col.decimals if col.decimals is not None else None)
            if step is None:
                x = lo + rng.random(len(c)) * (hi - lo)
            else:
                # a point of the column's grid (integers, or its decimals) inside the bin; the last bin includes max
                last = k == a.num_values - 1
                first_pt = np.ceil(lo / step - 1e-9)
                end_pt = np.where(last, np.floor(hi / step + 1e-9) + 1, np.ceil(hi / step - 1e-9))
                count = np.maximum(end_pt - first_pt, 1)
                x = np.round((first_pt + np.floor(rng.random(len(c)) * count)) * step, 6)
                x = np.clip(x, lo, hi)
        x = np.where(missing, np.nan, x)
        if col.type == "int" and not missing.any():
            return pd.Series(x.astype(np.int64))
        return pd.Series(x.astype(np.float64))

    def describe(self) -> list[dict]:
        """Public description of the domain (for reports): attribute, kind and number of levels."""
        return [{"attribute": a.name, "kind": "numeric" if a.edges else "categorical", "size": a.size} for a in self.attributes]
