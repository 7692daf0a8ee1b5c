"""Evaluation-only phrasings stay apart from training: nothing that trains connectors can reach them."""

from __future__ import annotations

import random
import subprocess
import sys
from pathlib import Path

import pytest

from client_party.datasets import DATASETS, load_schema, load_table
from protocol.schema import PublicSchema
from protocol.verbalizer import Verbalizer
from provider_party.model.synthesis import synthesize
from simulations import phrasings
from simulations.phrasings import HAND_WRITTEN, eval_questions, general_question

ROOT = Path(__file__).resolve().parents[1]
# Connectives only the evaluation phrasings use; the training verbalizer must never produce them.
EVAL_ONLY_MARKERS = ("as far as", "answers yes on", "answers no on", "does not apply", "was never filled in", "reads ",
                     "nobody wrote down", "does not have", "lacks ", "affirmative", " equals ")


def test_training_code_never_imports_the_evaluation_phrasings():
    """Importing every module that trains or serves connectors leaves `simulations.phrasings` unloaded."""
    modules = sorted({".".join(p.relative_to(ROOT).with_suffix("").parts) for d in ("protocol", "provider_party")
                      for p in (ROOT / d).rglob("*.py") if p.name != "__init__.py" and "_pb2" not in p.name})
    code = "import importlib, sys\n" + "".join(f"importlib.import_module({m!r})\n" for m in modules) + \
        "print('LEAK' if any(m.startswith('simulations') for m in sys.modules) else 'CLEAN')"
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300, check=False)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().endswith("CLEAN")


def test_no_training_source_mentions_the_evaluation_phrasings():
    for d in ("protocol", "provider_party"):
        for p in (ROOT / d).rglob("*.py"):
            assert "phrasings" not in p.read_text(), f"{p} refers to the evaluation-only phrasings"


@pytest.mark.parametrize("name", sorted(DATASETS))
def test_the_training_verbalizer_never_says_what_only_the_evaluation_says(name):
    schema = load_schema(name)
    rows, _ = synthesize(schema, n=400, seed=0)
    v = Verbalizer(schema, seed=0)
    for q in v.questions(rows.to_dict("records")[:200]):
        low = q.lower()
        assert not [m for m in EVAL_ONLY_MARKERS if m in low], q


@pytest.mark.parametrize("name", sorted(DATASETS))
def test_every_registered_table_has_a_hand_written_phrasing(name):
    df, schema = load_table(name)
    assert name in HAND_WRITTEN
    records = df[schema.feature_names].head(30).to_dict("records")
    qs, kinds = eval_questions(schema, records, seed=0)
    assert len(qs) == 30 and set(kinds) == {"hand", "general"}
    assert all(q.endswith(schema.label.question) for q, k in zip(qs, kinds) if k == "general")
    assert all(q.rstrip().endswith("?") for q in qs)
    assert eval_questions(schema, records, seed=0) == (qs, kinds)  # seeded


def test_hand_written_phrasings_state_values_without_field_names():
    df, _ = load_table("titanic")
    rng = random.Random(0)
    for row in df.head(40).to_dict("records"):
        q = HAND_WRITTEN["titanic"](row, rng).lower()
        assert "class of travel" not in q and "gender" not in q and "sex" not in q
        assert ("first" in q) == (row["passengerClass"] == "1st")


def test_an_unseen_table_falls_back_to_the_general_phrasings():
    schema = PublicSchema.from_dict({
        "name": "unseen", "version": "1", "description": "A table no template was written for.", "subject": "thing",
        "columns": [{"name": "colour", "type": "category", "description": "Its colour.", "categories": ["red", "blue"]},
                    {"name": "broken", "type": "bool", "description": "Whether it is broken."},
                    {"name": "weight", "type": "float", "description": "Weight.", "min": 0, "max": 10, "nullable": True}],
        "label": {"name": "keep", "classes": ["no", "yes"], "verbalizers": ["No", "Yes"], "question": "Keep it?"}})
    records = [{"colour": "red", "broken": "no", "weight": None}, {"colour": "blue", "broken": "yes", "weight": 2.5}] * 10
    qs, kinds = eval_questions(schema, records, seed=1)
    assert set(kinds) == {"general"}
    assert any("does not have broken" in q or "lacks broken" in q or "broken does not apply" in q or "answers no on broken" in q for q in qs)
    assert "blue" in general_question(schema, records[1], random.Random(0))


def test_a_registered_name_with_other_columns_falls_back_instead_of_failing():
    schema = PublicSchema.from_dict({
        "name": "titanic", "version": "9", "description": "Not the real titanic table.", "subject": "ship",
        "columns": [{"name": "tons", "type": "int", "description": "Tonnage.", "min": 0, "max": 100000}],
        "label": {"name": "sank", "classes": ["no", "yes"], "verbalizers": ["No", "Yes"], "question": "Did it sink?"}})
    qs, kinds = eval_questions(schema, [{"tons": 46328}] * 8, seed=0)
    assert set(kinds) == {"general"} and all("46328" in q for q in qs)


def test_the_module_says_it_is_evaluation_only():
    assert "EVALUATION ONLY" in phrasings.__doc__
