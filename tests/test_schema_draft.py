"""`llamdex schema draft` and `schema check`: a draft takes types, categories, nullability, the label and aliases from
the table, never a numeric range (the extremes are records), and cannot be used until its owner fills in public bounds."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from client_party.datasets import load_table, read_table_file
from client_party.schema_draft import draft_schema, unit_of, verbalizer_for, words_of
from protocol.errors import SchemaError
from protocol.schema import MAX_DECIMALS, PublicSchema

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
    assert "applicantAge.min" in str(err.value) and "public knowledge" in str(err.value)
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
    assert code == 3 and "applicantAge.min" in err and err.count("\n") == 1
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


# --- a table as users write it: markers, e-notation, case, junk, dates, constants, float labels, empty names ---------


def _notes(draft) -> dict[str, str]:
    return {n.split(": ")[0].removesuffix(" (label)"): n for n in draft.notes}


def test_missing_markers_read_as_missing_and_the_note_says_which_cells_held_which(tmp_path):
    """`read_table_file` hands "NA" over as text (it may be North America); the draft reads it as missing, as the loader
    does for a column whose schema does not list it, and says so: it was drafted as free text or as a level."""
    frame = loans_frame().astype({"applicantAge": str})
    frame["region"] = [["EU", "US", "NA"][i % 3] for i in range(40)]
    frame.loc[[2, 5], "applicantAge"], frame.loc[7, "applicantAge"] = "NA", "null"
    csv = tmp_path / "loans.csv"
    frame.to_csv(csv, index=False)
    draft = draft_schema(read_table_file(csv), label="status", name="loans")
    cols, notes = {c["name"]: c for c in draft.schema["columns"]}, _notes(draft)
    assert cols["region"]["categories"] == ["EU", "US"] and cols["region"]["nullable"] is True
    assert ("13 cells 'NA' read as missing; if 'NA' is a value of region (not a missing value), add it to categories and set "
            "nullable to false") in notes["region"]
    assert cols["applicantAge"]["type"] == "int" and cols["applicantAge"]["nullable"] is True   # only markers besides numbers
    assert "2 cells 'NA' and 1 cell 'null' read as missing" in notes["applicantAge"]
    for col in draft.schema["columns"]:
        if col["type"] in ("int", "float"):
            col["min"], col["max"] = 0, 10_000_000
    PublicSchema.from_dict(draft.schema).save(csv.with_name("loans.csv.schema.json"))
    df, _ = load_table(path=csv)
    assert df["region"].isna().sum() == 13 and df["applicantAge"].isna().sum() == 3
    labels = pd.DataFrame({"x": [str(i % 4) for i in range(30)], "continent": [["EU", "NA"][i % 2] for i in range(30)]})
    with pytest.raises(ValueError, match=r"1 distinct value\(s\) besides 15 cells 'NA' read as missing.*if 'NA' is a class of continent"):
        draft_schema(labels, label="continent", name="x")
    labels["continent"] = [["EU", "US", "NA"][i % 3] for i in range(30)]
    draft = draft_schema(labels, label="continent", name="x")
    assert draft.schema["label"]["classes"] == ["EU", "US"]
    assert "10 records have no label (10 cells 'NA' read as missing; if 'NA' is a class of continent" in _notes(draft)["continent"]


def test_decimals_count_e_notation_up_to_the_schema_cap_and_tiny_values_are_told_to_rescale():
    """'8.8e-06' needed no decimal and the cap was 4: every value printed as 0. Decimals follow the text (mantissa
    digits plus the exponent's shift), capped where `PublicSchema` caps them; no value is printed."""
    assert MAX_DECIMALS == 6
    status = pd.Series(["a", "b"] * 15)
    micro = [f"{8.8 + i / 10:.3f}e-06" for i in range(30)]                        # 8.800e-06 needs 9 decimals: cut to 6
    tiny = [f"{8.8 + i / 10:.1f}e-{8 + i % 2:02d}" for i in range(30)]            # 0 at 6 decimals
    milli = [f"{1.5 + i / 10:.1f}e-3" for i in range(30)]                         # 1.5e-3 needs 4
    fine = [f"{0.1234567 + i / 100:.7f}" for i in range(30)]                      # 7 decimals, cut to 6
    frame = pd.DataFrame({"micro": micro, "tiny": tiny, "milli": milli, "fine": fine, "status": status})
    draft = draft_schema(frame, label="status", name="t")
    cols, notes = {c["name"]: c for c in draft.schema["columns"]}, _notes(draft)
    assert [cols[c]["decimals"] for c in ("micro", "tiny", "milli", "fine")] == [6, 6, 4, 6]
    assert "at 6 decimals (the most a schema allows) most of its nonzero values print as 0" in notes["tiny"]
    assert "rescale it in the table into a unit in which its values are larger" in notes["tiny"]
    assert "decimals" not in notes["milli"]
    assert "at 6 decimals (the most a schema allows) most of its nonzero values keep fewer than 3 significant digits" in notes["micro"]
    assert "print rounded to 6" in notes["fine"] and "print as 0" not in notes["fine"] and "rescale" in notes["fine"]
    text = json.dumps(draft.schema) + "\n".join(draft.notes)
    for value in micro + tiny + milli + fine:
        assert value not in text and value.split("e")[0] not in text


def test_levels_that_differ_only_by_case_are_told_and_a_label_whose_answer_words_clash_is_refused():
    df = loans_frame().assign(home=[["Own", "own", " rent", "rent"][i % 4] for i in range(40)],
                              region=[["north", "south\nwest", "east"][i % 3] for i in range(40)])
    draft = draft_schema(df, label="status", name="t")
    cols, notes = {c["name"]: c for c in draft.schema["columns"]}, _notes(draft)
    assert cols["home"]["categories"] == ["Own", "own", "rent"]   # surrounding blanks are no level (the loader strips them)
    assert "levels 'Own' and 'own' differ only by case: merge them in the table" in notes["home"]
    assert "region" not in cols and "1 level holds a line break or another control character ('south\\nwest')" in notes["region"]
    with pytest.raises(ValueError, match="classes 'Yes' and 'yes' would get the same answer word 'Yes'"):
        draft_schema(df.assign(status=[["Yes", "yes", "No"][i % 3] for i in range(40)]), label="status", name="t")
    with pytest.raises(ValueError, match="classes 'very good' and 'very_good' would get the same answer word 'Very good'"):
        draft_schema(df.assign(status=[["very_good", "very good", "bad"][i % 3] for i in range(40)]), label="status", name="t")
    with pytest.raises(ValueError, match="control character"):
        draft_schema(df.assign(status=[["good\x00", "bad"][i % 2] for i in range(40)]), label="status", name="t")


def test_a_column_of_numbers_with_junk_or_formatting_is_left_out_with_the_precise_reason():
    """It was a category of number-like levels (publishing values) or left out as free text or an identifier."""
    score = [str(40 + i) for i in range(40)]
    for i in range(0, 40, 5):
        score[i] = "?" if i % 2 else "unknown"
    score[3] = "<7"                                                  # a text with a digit may hold a value: not shown
    df = loans_frame().assign(score=score, amount=[f"${1000 + 517 * i:,}" for i in range(40)],
                              share=[f"{i + 0.5}%" for i in range(40)], grade=[str(i % 4) if i % 10 else "-" for i in range(40)])
    draft = draft_schema(df, label="status", name="t")
    cols, notes = {c["name"]: c for c in draft.schema["columns"]}, _notes(draft)
    assert not {"score", "amount", "share", "grade"} & set(cols)
    assert ("score: left out: numbers except 9 cells holding 3 other texts ('unknown', '?', 1 more with digits, not shown): "
            "replace them with empty cells to draft it as a number (nullable)") in notes["score"]
    assert "amount: left out: numbers written with '$' and thousands separators: write them as plain numbers" in notes["amount"]
    assert "numbers written with '%'" in notes["share"]
    assert "numbers except 4 cells holding 1 other text ('-')" in notes["grade"] and "category if the numbers are codes" in notes["grade"]
    text = json.dumps(draft.schema) + "\n".join(draft.notes)
    for value in ("<7", "$1,000", "1,517", "40", "41", "0.5"):
        assert value not in text


def test_dates_and_times_are_left_out_with_how_to_derive_a_number(tmp_path):
    frame = pd.DataFrame({"day": [f"2020-01-{1 + i % 28:02d}" for i in range(40)],
                          "seen": [f"2021-03-{1 + i % 28:02d} 12:{i:02d}:00" for i in range(40)],
                          "iso": [f"2021-03-{1 + i % 28:02d}T08:{i:02d}:00Z" for i in range(40)],
                          "at": pd.date_range("2020-01-01", periods=40, freq="D"),
                          "size": [["S", "M", "L"][i % 3] for i in range(40)], "status": ["a", "b"] * 20})
    frame.to_parquet(tmp_path / "t.parquet")
    draft = draft_schema(read_table_file(tmp_path / "t.parquet"), label="status", name="t")
    assert [c["name"] for c in draft.schema["columns"]] == ["size"]
    notes = _notes(draft)
    for col in ("day", "seen", "iso", "at"):
        assert notes[col] == (f"{col}: left out: a date/time: derive a public numeric feature (e.g. year, or days since a date) in the "
                              "table by hand")
    assert "2020" not in json.dumps(draft.schema) + "\n".join(draft.notes)


def test_a_column_of_a_single_value_is_left_out_without_printing_it():
    df = loans_frame().assign(branch="7", country=["Utopia"] * 37 + [None] * 3, rate=["2.5", "2.50"] * 20)
    draft = draft_schema(df, label="status", name="t")
    cols, notes = {c["name"]: c for c in draft.schema["columns"]}, _notes(draft)
    assert not {"branch", "country", "rate"} & set(cols)
    for col in ("branch", "country", "rate"):
        assert notes[col].startswith(f"{col}: left out: a single value; it tells nothing")
    assert "3 empty cells" in notes["country"] and "2.5" not in "\n".join(draft.notes)


def test_a_label_of_integral_floats_drafts_like_an_integer_label_and_loads(tmp_path):
    """A CSV written from a float column says '0.0'/'1.0': the answer words were '0 0' and '1 0'."""
    frame = loans_frame().assign(status=[["0.0", "1.0"][i % 2] for i in range(40)])
    draft = draft_schema(frame, label="status", name="t")
    assert draft.schema["label"]["classes"] == ["0.0", "1.0"] and draft.schema["label"]["verbalizers"] == ["No", "Yes"]
    assert draft.schema["label"]["question"].startswith("Is this ")
    three = draft_schema(frame.assign(status=[["1.0", "2.0", "3.0"][i % 3] for i in range(40)]), label="status", name="t")
    assert three.schema["label"]["verbalizers"] == ["1", "2", "3"] and verbalizer_for("2.5") == "2.5"
    csv = tmp_path / "t.csv"
    frame.to_csv(csv, index=False)
    for col in draft.schema["columns"]:
        if col["type"] in ("int", "float"):
            col["min"], col["max"] = 0, 10_000_000
    PublicSchema.from_dict(draft.schema).save(csv.with_name("t.csv.schema.json"))
    df, _ = load_table(path=csv)
    assert sorted(set(df["status"])) == ["0.0", "1.0"]


def test_a_column_without_a_header_name_is_told(tmp_path):
    csv = tmp_path / "t.csv"
    csv.write_text("age,,status\n" + "".join(f"{20 + i},{['x', 'y'][i % 2]},{['a', 'b'][i % 3 % 2]}\n" for i in range(30)))
    draft = draft_schema(read_table_file(csv), label="status", name="t")
    assert any("column 2 has no name in the header" in n and n.startswith("Unnamed: 1: ") for n in draft.notes)


def test_a_label_name_that_differs_by_blanks_or_case_is_pointed_at():
    """A header ' status' was refused with "columns: age,  status": the blank was invisible."""
    frame = pd.DataFrame({"age": ["30", "40"] * 20, " Status": ["good", "bad"] * 20})
    with pytest.raises(Exception, match=r"did you mean ' Status'\?.*columns: age, ' Status'"):
        draft_schema(frame, label="status", name="t")
