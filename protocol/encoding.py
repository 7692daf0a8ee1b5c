"""Feature encoding shared by the expert and the expert encoder, computed from the schema alone.

Numeric columns are min-max scaled with the *schema's* public range and clipped; categorical and
boolean columns are one-hot. Every column carries an explicit missing indicator. No statistic of
the data is ever used: a mean or a quantile would leak the private table into the model's inputs.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from protocol.schema import ColumnSpec, PublicSchema

_TRUE = {"yes", "true", "1", "y", "t"}
_FALSE = {"no", "false", "0", "n", "f"}


def is_missing(value: Any) -> bool:
    if value is None:
        return True
    try:
        return bool(pd.isna(value))
    except (TypeError, ValueError):
        return False


def bool_level(value: Any) -> str | None:
    """Normalises a boolean-ish value to 'no'/'yes'; None when it is not one."""
    if isinstance(value, (bool, np.bool_)):
        return "yes" if value else "no"
    s = str(value).strip().lower()
    if s in _TRUE:
        return "yes"
    if s in _FALSE:
        return "no"
    return None


@dataclass(frozen=True)
class FeatureBlock:
    """The slice of the encoded vector that belongs to one column."""

    column: ColumnSpec
    start: int
    stop: int

    @property
    def kind(self) -> str:
        return "numeric" if self.column.is_numeric else "categorical"

    @property
    def missing_index(self) -> int:
        """Absolute index of the missing indicator (always the block's last entry)."""
        return self.stop - 1

    @property
    def num_levels(self) -> int:
        return len(self.column.levels)


class FeatureEncoder:
    """Turns rows into the fixed-width vector the expert reads, and back."""

    def __init__(self, schema: PublicSchema):
        self.schema = schema
        blocks, pos = [], 0
        for col in schema.columns:
            width = 2 if col.is_numeric else len(col.levels) + 1
            blocks.append(FeatureBlock(col, pos, pos + width))
            pos += width
        self.blocks: tuple[FeatureBlock, ...] = tuple(blocks)
        self.dim = pos
        # where each numeric value sits (its missing flag follows): what an expert spec v2 bins
        self.numeric_positions: tuple[int, ...] = tuple(b.start for b in blocks if b.kind == "numeric")

    def scale(self, col: ColumnSpec, value: float) -> float:
        return float(np.clip((value - col.min) / (col.max - col.min), 0.0, 1.0))

    def unscale(self, col: ColumnSpec, x01: float) -> float:
        v = col.min + float(np.clip(x01, 0.0, 1.0)) * (col.max - col.min)
        return float(round(v)) if col.type == "int" else v

    def level_index(self, col: ColumnSpec, value: Any) -> int | None:
        """Index of a categorical value among the column's levels; None if missing; raises if unknown."""
        if is_missing(value):
            return None
        if col.type == "bool":
            lv = bool_level(value)
            if lv is None:
                raise ValueError(f"column {col.name!r}: {value!r} is not a boolean (use yes/no, true/false, 1/0)")
            return col.levels.index(lv)
        s = str(value)
        if s not in col.categories:
            raise ValueError(f"column {col.name!r}: unknown category {s!r}; allowed: {list(col.categories)}")
        return col.categories.index(s)

    def encode_frame(self, df: pd.DataFrame) -> np.ndarray:
        """Encodes the schema's columns of `df` (validated beforehand) into float32 rows."""
        n = len(df)
        out = np.zeros((n, self.dim), dtype=np.float32)
        for b in self.blocks:
            col = b.column
            values = df[col.name].to_numpy(dtype=object)
            for i, v in enumerate(values):
                if is_missing(v):
                    out[i, b.missing_index] = 1.0
                elif col.is_numeric:
                    out[i, b.start] = self.scale(col, float(v))
                else:
                    out[i, b.start + self.level_index(col, v)] = 1.0
        return out

    def encode_records(self, records: list[dict[str, Any]]) -> np.ndarray:
        return self.encode_frame(pd.DataFrame.from_records(records, columns=self.schema.feature_names))

    def targets(self, df: pd.DataFrame) -> dict[str, np.ndarray]:
        """Per-column training targets for the expert encoder.

        Numeric: float32 (n, 2) = (scaled value, missing flag). Categorical: int64 (n,) with the
        level index, and `num_levels` meaning missing.
        """
        x = self.encode_frame(df)
        out: dict[str, np.ndarray] = {}
        for b in self.blocks:
            if b.kind == "numeric":
                out[b.column.name] = x[:, [b.start, b.missing_index]].copy()
            else:
                out[b.column.name] = x[:, b.start:b.stop].argmax(axis=1).astype(np.int64)
        return out

    def decode(self, x: np.ndarray) -> pd.DataFrame:
        """Inverse of `encode_frame` (numeric values come back rounded only for int columns)."""
        x = np.asarray(x, dtype=np.float32)
        cols: dict[str, list[Any]] = {}
        for b in self.blocks:
            col, vals = b.column, []
            for row in x:
                if row[b.missing_index] > 0.5 and (b.kind == "numeric" or row[b.start:b.stop].argmax() == b.num_levels):
                    vals.append(None)
                elif b.kind == "numeric":
                    vals.append(self.unscale(col, row[b.start]))
                else:
                    vals.append(col.levels[int(row[b.start:b.missing_index].argmax())])
            cols[col.name] = vals
        return pd.DataFrame(cols)

    def label_index(self, values: pd.Series) -> np.ndarray:
        classes = list(self.schema.label.classes)
        idx = []
        for i, v in enumerate(values.tolist()):
            s = str(v)
            if is_missing(v) or s not in classes:
                raise ValueError(f"label {self.schema.label.name!r}, row {i}: {v!r} is not one of {classes}")
            idx.append(classes.index(s))
        return np.asarray(idx, dtype=np.int64)
