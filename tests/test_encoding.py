"""Feature encoding: schema ranges only, lossless round trip on real rows, clipping, explicit missing indicators."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from client_party.datasets import DATASETS, load_table
from protocol.encoding import FeatureEncoder


@pytest.fixture(scope="module")
def tables():
    return {name: load_table(name) for name in DATASETS}


def sample_rows(df: pd.DataFrame, n: int = 40) -> pd.DataFrame:
    """The first rows plus every row with a missing value (up to n of them)."""
    missing = df[df.isna().any(axis=1)].head(n)
    return pd.concat([df.head(n), missing]).drop_duplicates()


@pytest.mark.parametrize("name", sorted(DATASETS))
def test_encode_decode_round_trip_on_real_rows(tables, name):
    df, schema = tables[name]
    rows = sample_rows(df)
    enc = FeatureEncoder(schema)
    x = enc.encode_frame(rows)
    assert x.shape == (len(rows), enc.dim) and x.dtype == np.float32
    assert ((x >= 0) & (x <= 1)).all()
    back = enc.decode(x)
    for col in schema.columns:
        orig, got = rows[col.name].to_numpy(dtype=object), back[col.name].to_numpy(dtype=object)
        for o, g in zip(orig, got):
            if pd.isna(o):
                assert g is None or pd.isna(g), (col.name, o, g)
            elif col.type == "int":
                assert g == o, (col.name, o, g)
            elif col.type == "float":
                assert abs(g - o) <= 1e-6 * (col.max - col.min), (col.name, o, g)
            else:
                assert g == o, (col.name, o, g)


def test_missing_values_have_an_explicit_indicator(tables):
    df, schema = tables["titanic"]
    enc = FeatureEncoder(schema)
    age = next(b for b in enc.blocks if b.column.name == "age")
    row = df[df["age"].isna()].head(1)
    x = enc.encode_frame(row)[0]
    assert x[age.missing_index] == 1.0 and x[age.start] == 0.0


def test_encoding_uses_schema_ranges_not_data_statistics(tables):
    df, schema = tables["titanic"]
    enc = FeatureEncoder(schema)
    fixed = pd.DataFrame([{"sex": "female", "age": 40.0, "passengerClass": "2nd"}])
    reference = enc.encode_frame(fixed)[0]
    shifted = df.head(200).copy()
    shifted["age"] = shifted["age"] * 0.25 + 60  # a completely different age distribution
    shifted["sex"] = "male"
    together = pd.concat([fixed, shifted[schema.feature_names]], ignore_index=True)
    assert np.array_equal(enc.encode_frame(together)[0], reference)
    age = next(b for b in enc.blocks if b.column.name == "age")
    assert reference[age.start] == pytest.approx(40 / 80)  # min-max of the public range 0..80


def test_out_of_range_numbers_are_clipped_to_the_schema_range(tables):
    _, schema = tables["titanic"]
    enc = FeatureEncoder(schema)
    x = enc.encode_records([
        {"sex": "male", "age": 120.0, "passengerClass": "1st"},
        {"sex": "male", "age": -3.0, "passengerClass": "1st"},
    ])
    age = next(b for b in enc.blocks if b.column.name == "age")
    assert x[0, age.start] == 1.0 and x[1, age.start] == 0.0
    assert x[:, age.missing_index].tolist() == [0.0, 0.0]


def test_unknown_category_raises_naming_the_column(tables):
    _, schema = tables["titanic"]
    with pytest.raises(ValueError, match="passengerClass.*'4th'"):
        FeatureEncoder(schema).encode_records([{"sex": "male", "age": 30.0, "passengerClass": "4th"}])


def test_bool_columns_accept_common_spellings(tables):
    _, schema = tables["default"]
    enc = FeatureEncoder(schema)
    spellings = [{"student": v, "balance": 100.0, "income": 1000.0} for v in ("Yes", "yes", True, 1, "No", False, 0)]
    x = enc.encode_records(spellings)
    decoded = enc.decode(x)["student"].tolist()
    assert decoded == ["yes", "yes", "yes", "yes", "no", "no", "no"]
