"""`llamdex schema draft` and `schema check`: a draft takes types, categories, nullability, the label and aliases from
the table, never a numeric range (the extremes are records), and cannot be used until its owner fills in public bounds."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from client_party.datasets import load_table
from client_party.schema_draft import draft_schema, unit_of, verbalizer_for, words_of
from protocol.errors import SchemaError
from protocol.schema import PublicSchema

# Values of the numeric columns, extremes included: "records" the draft must not publish.
SECRET_VALUES = ("17.25", "203.75", "20000", "1234567", "3141592", "7.125", "271828", "1.5")


def loans_frame(n: int = 40) -> pd.DataFrame:
    rows = []
    for i in range(n):
        rows.append({
            "loan_id": str(100_000 + i),                                   # an identifier: left out
            "applicantAge": 18 + (i * 7) % 50,
            "income_usd": 20_000 + 517 * i if i != 5 else 1234567,
            "debt_ratio_pct": [1.5, 2.25, 7.125][i % 3] if i != 7 else 203.75,
            "home": ["own", "rent", "parents"][i % 3] if i % 11 else None,  # nullable category
            "has_car": ["Yes", "No"][i % 2],                               # bool
            "region": ["north", "south", "east", "west", "center"][i % 5] if i != 3 else "island",  # 'island' held by one record
            "status": ["good", "bad", "very_good"][i % 3],                 # 3-class label
        })
    rows[9]["income_usd"] = 3141592
    rows[12]["debt_ratio_pct"] = 17.25
    rows[13]["income_usd"] = 271828
    return pd.DataFrame(rows)


@pytest.fixture()
def loans_csv(tmp_path):
    path = tmp_path / "loans.csv"
    loans_frame().to_csv(path, index=False)
    return path


def test_names_become_aliases_and_units():
    assert words_of("passengerClass") == "passenger class" and words_of("bill_length_mm") == "bill length mm"
    assert unit_of("bill_length_mm") == ("bill length", "mm") and unit_of("income_usd") == ("income", "dollars") and unit_of("age") == ("age", None)
    assert verbalizer_for("very_good") == "Very good" and verbalizer_for("Adelie") == "Adelie"


def test_a_draft_takes_types_categories_nullability_label_and_aliases_from_the_table():
    draft = draft_schema(loans_frame(), label="status", name="loans", subject="loan applicant")
    cols = {c["name"]: c for c in draft.schema["columns"]}
    assert list(cols) == ["applicantAge", "income_usd", "debt_ratio_pct", "home", "has_car", "region"]  # loan_id left out
    assert cols["applicantAge"]["type"] == "int" and cols["income_usd"]["type"] == "int" and cols["debt_ratio_pct"]["type"] == "float"
    assert cols["income_usd"]["unit"] == "dollars" and cols["income_usd"]["aliases"] == ["income"]
    assert cols["debt_ratio_pct"]["decimals"] == 3 and cols["debt_ratio_pct"]["unit"] == "percent"
    assert cols["home"] == {"name": "home", "description": "The home.", "aliases": ["home"], "type": "category",
                            "categories": ["own", "parents", "rent"], "nullable": True, "sensitive": False}
    assert cols["has_car"]["type"] == "bool" and cols["has_car"]["nullable"] is False
    assert cols["applicantAge"]["aliases"] == ["applicant age"]
    label = draft.schema["label"]
    assert label["classes"] == ["bad", "good", "very_good"] and label["verbalizers"] == ["Bad", "Good", "Very good"]
    assert label["question"].endswith("?") and "loan applicant" in label["question"]
    assert draft.schema["subject"] == "loan applicant" and draft.schema["name"] == "loans"
    assert any(n.startswith("aliases: ") and "add the names your users say" in n for n in draft.notes)


def test_a_draft_never_holds_a_numeric_value_of_the_data():
    text = json.dumps(draft_schema(loans_frame(), label="status", name="loans").schema)
    for secret in SECRET_VALUES:
        assert secret not in text, f"the draft publishes {secret}"
    for col in json.loads(text)["columns"]:
        if col["type"] in ("int", "float"):
            assert isinstance(col["min"], str) and isinstance(col["max"], str) and "FILL IN" in col["min"]


def test_one_note_per_column_says_what_to_fill_in_or_check():
    draft = draft_schema(loans_frame(), label="status", name="loans")
    by_column = {n.split(":")[0].split(" (")[0]: n for n in draft.notes}
    assert set(by_column) >= {"loan_id", "applicantAge", "income_usd", "debt_ratio_pct", "home", "has_car", "region", "status"}
    assert "left out" in by_column["loan_id"]
    for col in ("applicantAge", "income_usd", "debt_ratio_pct"):
        assert "fill in min and max from public knowledge" in by_column[col] and "records" in by_column[col]
    assert "fewer than 5 records" in by_column["region"]
    assert "nullable" in by_column["home"] and "first token" in by_column["status"]
    assert draft.placeholders == ["applicantAge.min", "applicantAge.max", "income_usd.min", "income_usd.max", "debt_ratio_pct.min",
                                  "debt_ratio_pct.max"]


def test_a_numeric_column_with_an_infinite_value_is_drafted_as_a_number_and_the_record_named():
    """It was drafted as a category of every distinct number (or left out as free text, past 30 of them)."""
    df = loans_frame().astype({"income_usd": str, "debt_ratio_pct": str})
    df.loc[4, "income_usd"], df.loc[8, "debt_ratio_pct"], df.loc[10, "debt_ratio_pct"] = "inf", "-Infinity", "INF"
    draft = draft_schema(df, label="status", name="loans")
    cols = {c["name"]: c for c in draft.schema["columns"]}
    assert cols["income_usd"]["type"] == "int" and cols["debt_ratio_pct"]["type"] == "float" and cols["debt_ratio_pct"]["decimals"] == 3
    notes = {n.split(":")[0]: n for n in draft.notes}
    assert "1 record holds an infinite value" in notes["income_usd"] and "2 records hold an infinite value" in notes["debt_ratio_pct"]
    assert "--on-invalid drop" in notes["income_usd"]
    only_inf = pd.DataFrame({"x": ["inf", "-inf"] * 10, "status": ["a", "b"] * 10})
    assert [c["type"] for c in draft_schema(only_inf, label="status", name="t").schema["columns"]] == ["category"]


def test_validation_refuses_a_draft_until_public_bounds_are_filled_in_and_then_the_table_loads(loans_csv):
    draft = draft_schema(pd.read_csv(loans_csv, dtype=object), label="status", name="loans")
    with pytest.raises(SchemaError) as err:
        PublicSchema.from_dict(draft.schema)
    assert "applicantAge" in str(err.value) and "'min'" in str(err.value) and "public knowledge" in str(err.value)
    bounds = {"applicantAge": (18, 120), "income_usd": (0, 10_000_000), "debt_ratio_pct": (0, 1000)}
    for col in draft.schema["columns"]:
        if col["name"] in bounds:
            col["min"], col["max"] = bounds[col["name"]]
    schema = PublicSchema.from_dict(draft.schema)
    schema.save(loans_csv.with_name("loans.csv.schema.json"))
    df, _ = load_table(path=loans_csv)
    assert len(df) == 40 and set(df["status"]) == {"bad", "good", "very_good"}


def test_a_label_needs_two_to_thirty_classes():
    df = loans_frame()
    with pytest.raises(ValueError, match="at least 2 classes"):
        draft_schema(df.assign(status="good"), label="status", name="x")
    with pytest.raises(ValueError, match="not a column"):
        draft_schema(df, label="Status", name="x")
    with pytest.raises(ValueError, match="distinct values"):
        draft_schema(df.assign(status=[str(i) for i in range(len(df))]), label="status", name="x")


def _llamdex(argv, capsys):
    from simulations.cli.main import main

    try:
        code = main(argv)
    except SystemExit as e:
        code = e.code
    out = capsys.readouterr()
    return code, out.out, out.err


def test_cli_draft_writes_beside_the_table_prints_one_line_per_column_and_check_refuses_it_until_filled(loans_csv, capsys):
    code, out, _ = _llamdex(["schema", "draft", str(loans_csv), "--label", "status", "--subject", "loan applicant"], capsys)
    target = loans_csv.with_name("loans.csv.schema.json")
    assert code == 0 and target.is_file()
    assert sum(1 for line in out.splitlines() if line.startswith("  - ")) == 11  # 8 columns, the subject line, the alias and level-phrase hints
    assert "6 range bounds still hold a placeholder" in out
    code, _, err = _llamdex(["schema", "draft", str(loans_csv), "--label", "status"], capsys)
    assert code == 2 and "--force" in err  # an existing draft is not overwritten
    code, _, err = _llamdex(["schema", "check", "--data", str(loans_csv), "--no-tokenizer"], capsys)
    assert code == 3 and "applicantAge" in err and "'min'" in err and err.count("\n") == 1
    draft = json.loads(target.read_text())
    for col in draft["columns"]:
        if col["type"] in ("int", "float"):
            col["min"], col["max"] = 0, 100  # public bounds too narrow for this table: the check names the records
    target.write_text(json.dumps(draft))
    code, out, _ = _llamdex(["schema", "check", "--data", str(loans_csv), "--no-tokenizer"], capsys)
    assert code == 3 and "outside the schema range [0, 100]" in out and "--on-invalid" in out
    for col in draft["columns"]:
        if col["type"] in ("int", "float"):
            col["min"], col["max"] = 0, 10_000_000
    target.write_text(json.dumps(draft))
    code, out, _ = _llamdex(["schema", "check", "--data", str(loans_csv), "--no-tokenizer", "--json"], capsys)
    findings = json.loads(out)
    assert code == 0 and findings["records"] == 40 and findings["problems"] == [] and findings["schema"]["classes"] == ["bad", "good", "very_good"]


def test_cli_check_reads_the_answer_words_with_the_base_llm(tmp_path, capsys, base_llm):
    """`Very good` and `Very bad` share their first token: the check says so before any upload."""
    code, out, _ = _llamdex(["schema", "check", "--data", "penguins"], capsys)
    assert code == 0 and "first tokens differ" in out
    frame = loans_frame().assign(status=[["very_good", "very_bad", "fair"][i % 3] for i in range(40)])
    csv = tmp_path / "loans.csv"
    frame.to_csv(csv, index=False)
    _llamdex(["schema", "draft", str(csv), "--label", "status"], capsys)
    target = csv.with_name("loans.csv.schema.json")
    draft = json.loads(target.read_text())
    for col in draft["columns"]:
        if col["type"] in ("int", "float"):
            col["min"], col["max"] = 0, 10_000_000
    target.write_text(json.dumps(draft))
    code, out, _ = _llamdex(["schema", "check", "--data", str(csv)], capsys)
    assert code == 3 and "'Very bad' and 'Very good' both start with the token 'Very'" in out and "starts differently" in out
