"""The reader ablation benchmark: variants parsed strictly, every variant read on the same real questions, a report per table."""

from __future__ import annotations

import argparse
import json

import pytest

from simulations.benchmarks.reader_ablation import main, markdown, parse_variants, summary


def test_variants_are_window_by_blocks_with_an_odd_window():
    assert parse_variants("5x2, 9X2,13x1") == [(5, 2), (9, 2), (13, 1)]
    for bad, message in (("8x2", "odd"), ("9", "WINDOWxBLOCKS"), ("9x0", "blocks"), ("", "at least one")):
        with pytest.raises(argparse.ArgumentTypeError, match=message):
            parse_variants(bad)


def test_summary_takes_the_lower_of_reading_and_missing_flag_per_column():
    s = summary({"a": {"accuracy": 0.99, "missing_flag_accuracy": 0.95}, "b": {"exact": 0.9, "mae": 1.0, "missing_flag_accuracy": 1.0},
                 "c": {"accuracy": 1.0, "missing_flag_accuracy": 1.0}})
    assert s["worst"] == 0.9 and s["below"] == {"b": 0.9, "a": 0.95} and s["mean"] == pytest.approx((0.95 + 0.9 + 1.0) / 3)


@pytest.mark.slow   # a research script (~20 s); the reader it varies is tested by tests/test_extraction.py in the default run
def test_two_variants_on_titanic_read_the_same_real_questions(tmp_path):
    """A small run end to end: both variants are trained and read the verbalizer's and the evaluation-only phrasings of the
    same 16 held-out passengers; the report names each variant."""
    assert main(["--data", "titanic", "--variants", "3x1,5x1", "--questions", "48", "--max-test", "16", "--quiet", "--out", str(tmp_path)]) == 0
    payload = json.loads((tmp_path / "reader_ablation.json").read_text())
    variants = payload["tables"]["titanic"]["variants"]
    assert set(variants) == {"3x1", "5x1"}
    for res in variants.values():
        assert set(res["verbalizer"]) == set(res["phrasings"]) == {"sex", "age", "passengerClass"}
        assert all(col["n"] > 0 for col in res["verbalizer"].values())
        assert res["synthetic"]["sex"]["n"] > 0 and res["train_s"] > 0
    assert payload["tables"]["titanic"]["questions"] == {"synthetic": 48, "real": 16}
    md = (tmp_path / "RESULTS.md").read_text()
    assert "| titanic | 3 × 1 |" in md and "|  | 5 × 1 |" in md and md.count("\n| ") >= 3
    assert markdown(payload) in md
