"""The reader ablation benchmark: variants parsed strictly, every variant read on the same real questions, a report per table."""

from __future__ import annotations

import argparse
import json

import pytest

from simulations.benchmarks.reader_ablation import add_arguments, main, markdown, parse_variants, summary


def test_variants_are_window_by_blocks_with_an_odd_window_and_an_optional_layer():
    assert parse_variants("5x2, 9X2,13x1@20") == [(5, 2, None), (9, 2, None), (13, 1, 20)]
    for bad, message in (("8x2", "odd"), ("9", "WINDOWxBLOCKS"), ("9x0", "blocks"), ("", "at least one"), ("9x2@", "WINDOWxBLOCKS@LAYER"),
                         ("9x2@0", "layer"), ("9x2@x", "WINDOWxBLOCKS@LAYER")):
        with pytest.raises(argparse.ArgumentTypeError, match=message):
            parse_variants(bad)


def test_the_report_name_names_a_file_and_a_section_and_nothing_else():
    ap = add_arguments(argparse.ArgumentParser())
    assert ap.parse_args([]).name == "reader_ablation" and ap.parse_args(["--name", "reader_layers"]).name == "reader_layers"
    for bad in ("../x", "a b", "x.json", ""):
        with pytest.raises(SystemExit):
            ap.parse_args(["--name", bad])


def test_summary_takes_the_lower_of_reading_and_missing_flag_per_column():
    s = summary({"a": {"accuracy": 0.99, "missing_flag_accuracy": 0.95}, "b": {"exact": 0.9, "mae": 1.0, "missing_flag_accuracy": 1.0},
                 "c": {"accuracy": 1.0, "missing_flag_accuracy": 1.0}})
    assert s["worst"] == 0.9 and s["below"] == {"b": 0.9, "a": 0.95} and s["mean"] == pytest.approx((0.95 + 0.9 + 1.0) / 3)


@pytest.mark.slow   # a research script (~20 s); the reader it varies is tested by tests/test_extraction.py in the default run
def test_two_variants_on_titanic_read_the_same_real_questions(tmp_path):
    """A small run end to end: the variants (two windows at the preset's layer, one at a deeper layer from the same pass)
    are trained and read the verbalizer's and the evaluation-only phrasings of the same 16 held-out passengers; the report
    names each variant and its layer, and splits the evaluation-only phrasings by mechanism."""
    assert main(["--data", "titanic", "--variants", "3x1,5x1,3x1@16", "--questions", "48", "--max-test", "16", "--quiet",
                 "--out", str(tmp_path)]) == 0
    payload = json.loads((tmp_path / "reader_ablation.json").read_text())
    variants = payload["tables"]["titanic"]["variants"]
    assert set(variants) == {"3x1", "5x1", "3x1@16"}
    assert [variants[v]["layer"] for v in ("3x1", "5x1", "3x1@16")] == [12, 12, 16]
    for res in variants.values():
        assert set(res["verbalizer"]) == set(res["phrasings"]) == {"sex", "age", "passengerClass"}
        assert all(col["n"] > 0 for col in res["verbalizer"].values())
        assert res["synthetic"]["sex"]["n"] > 0 and res["train_s"] > 0
        by = res["phrasings_by_mechanism"]
        assert set(by) <= {"general", "hand"} and sum(by[k]["sex"]["n"] for k in by) == res["phrasings"]["sex"]["n"]
    assert payload["tables"]["titanic"]["questions"] == {"synthetic": 48, "real": 16}
    md = (tmp_path / "RESULTS.md").read_text()
    assert "| titanic | 3 × 1 @ 12 |" in md and "|  | 5 × 1 @ 12 |" in md and "|  | 3 × 1 @ 16 |" in md and md.count("\n| ") >= 4
    assert markdown(payload) in md
