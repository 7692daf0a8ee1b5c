"""The expert encoder's reader: a pointer onto each column's stated value, or onto "nothing stated".

The schema here is built to be hard for a pooled read-out: eight columns share the same four value
words (like satisfaction surveys), three yes/no columns, and nullable columns of every type.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from protocol.encoding import FeatureEncoder, is_missing
from protocol.schema import PublicSchema
from protocol.seeding import generator, init_parameters
from provider_party.model.connectors import ConnectorConfig, build_connectors
from provider_party.model.encoder_training import (
    Thresholds,
    describe_shortfalls,
    extraction_report,
    shortfalls,
    tolerance,
    train_encoder,
)
from provider_party.model.llamdex_model import LlamdexModel
from provider_party.model.prompting import PromptBuilder
from provider_party.model.training_data import (
    build_corpus,
    cache_encoder_states,
    cache_questions,
    pointer_targets,
)

LEVELS = ["Low", "Medium", "High", "Very_High"]
SURVEY = [("comfort", ["comfort", "comfort rating"]), ("noise", ["noise level", "noisiness"]), ("light", ["daylight", "light level"]),
          ("space", ["space", "roominess"]), ("cost", ["cost level", "price level"]), ("service", ["service", "service quality"]),
          ("safety", ["safety", "security rating"]), ("view", ["view", "outlook"])]


def shared_words_schema() -> PublicSchema:
    cols = [{"name": n, "type": "category", "description": f"Survey answer on {a[0]}.", "categories": LEVELS, "aliases": a,
             "nullable": n == "view"} for n, a in SURVEY]
    cols += [{"name": n, "type": "bool", "description": f"Whether it has {n}.", "aliases": [n], "nullable": n == "pets"}
             for n in ("parking", "pets", "garden")]
    cols += [{"name": "rooms", "type": "int", "description": "Number of rooms.", "min": 1, "max": 12, "aliases": ["rooms", "room count"], "nullable": True}]
    return PublicSchema.from_dict({"name": "survey", "version": "1", "description": "Flats rated by tenants.", "subject": "flat", "columns": cols,
                                   "label": {"name": "liked", "classes": ["no", "yes"], "verbalizers": ["No", "Yes"], "question": "Would a tenant like this flat?"}})


@pytest.fixture(scope="module")
def survey_reader(base_llm):
    """An encoder trained on 320 synthetic questions of the survey schema, and 48 held-out ones.

    "unknown" is one of four missing words in one of five missing forms, so a small corpus says it
    rarely; with 160 questions whether "pets: unknown" read as missing depended on the corpus's
    numbers (it failed once the synthetic numbers were spread over magnitudes), and with 240 it
    failed once the mixer's window grew from 5 to 9 tokens (more weights to fit; the presets train
    on at least 400 questions)."""
    schema = shared_words_schema()
    config = ConnectorConfig(base_model_id=base_llm.model_id, schema_digest=schema.digest, hidden_size=base_llm.hidden_size,
                             num_layers=base_llm.num_layers, encoder_layer=12, inject_layer=20)
    encoder, decoder = build_connectors(config, schema)
    init_parameters(encoder, generator(0))
    model = LlamdexModel(base_llm, schema, config, encoder, decoder)
    corpus = build_corpus(schema, n_synthetic=400, encoder_questions=320, decoder_questions=0, val_questions=24, surrogate_epochs=1, seed=3)
    train, _ = cache_questions(model, corpus, corpus.encoder_idx, 16, candidates=None, desc="", progress=False)
    val, _ = cache_questions(model, corpus, np.concatenate([corpus.encoder_val_idx, corpus.decoder_val_idx]), 16, candidates=None,
                             desc="", progress=False)
    encoder = train_encoder(model.encoder.train(), train, epochs=20, lr=3e-3, gen=generator(0), batch_size=8)
    return model, encoder, val


def test_columns_sharing_value_words_are_each_read_from_their_own_field(survey_reader):
    model, encoder, val = survey_reader
    report = extraction_report(encoder, val, FeatureEncoder(model.schema))
    for name, _ in SURVEY:
        assert report[name]["accuracy"] >= 0.9, (name, report[name])
    for name in ("parking", "pets", "garden"):
        assert report[name]["accuracy"] >= 0.9, (name, report[name])
    assert report["rooms"]["exact"] >= 0.9


def test_missing_is_the_readers_own_outcome_for_every_column_type(survey_reader):
    model, encoder, val = survey_reader
    report = extraction_report(encoder, val, FeatureEncoder(model.schema))
    for name in ("view", "pets", "rooms"):  # nullable: category, yes/no, number
        assert report[name]["missing_flag_accuracy"] >= 0.9, (name, report[name])


def test_an_omitted_or_unknown_field_reads_as_missing_and_the_others_still_read(survey_reader):
    model, encoder, _ = survey_reader
    fe = FeatureEncoder(model.schema)
    qs = ["Here is the record of a flat. Comfort: High, noise level: Low, daylight: Very High, space: Medium, cost level: Low, "
          "service: High, safety: Medium, view: unknown, parking: yes, pets: unknown, garden: no. Would a tenant like this flat?",
          "Here is the record of a flat. Comfort: Low, noise level: High, daylight: Medium, space: Very High, cost level: High, "
          "service: Low, safety: High, parking: no, garden: yes, rooms: 4. Would a tenant like this flat?"]
    with torch.no_grad():
        batch = model.batch(qs, with_slots=False)
        h = model.lm.lower(batch, [12])[12]
        decoded = fe.decode(encoder.to_expert_input(encoder(h, batch.question_mask, batch.numbers)).numpy())
    first, second = decoded.iloc[0], decoded.iloc[1]
    assert is_missing(first["view"]) and is_missing(first["pets"]) and is_missing(first["rooms"])  # said unknown, said unknown, omitted
    assert is_missing(second["view"]) and is_missing(second["pets"]) and second["rooms"] == 4   # omitted, omitted, stated
    expected = {"comfort": ("High", "Low"), "noise": ("Low", "High"), "light": ("Very_High", "Medium"), "space": ("Medium", "Very_High"),
                "cost": ("Low", "High"), "service": ("High", "Low"), "safety": ("Medium", "High"), "parking": ("yes", "no"), "garden": ("no", "yes")}
    wrong = [(c, r[c], e) for c, pair in expected.items() for r, e in zip((first, second), pair) if r[c] != e]
    assert len(wrong) <= 2, wrong


def test_pointer_targets_mark_each_value_and_nothing_for_missing(base_llm):
    schema = shared_words_schema()
    fe = FeatureEncoder(schema)
    prompts = PromptBuilder(base_llm.tokenizer, schema)
    corpus = build_corpus(schema, n_synthetic=60, encoder_questions=8, decoder_questions=0, val_questions=0, surrogate_epochs=1, seed=0)
    utts = [corpus.utterances[i] for i in range(8)]
    batch = prompts.batch([u.text for u in utts], 0)
    t = pointer_targets(fe, prompts, utts, corpus.rows.iloc[:8], batch)
    for r, u in enumerate(utts):
        for ci, b in enumerate(fe.blocks):
            stated = b.column.name in u.spans
            assert bool(t.missing[r, ci]) == (not stated)
            assert bool(t.tokens[r, ci].any()) == stated
            if stated:
                said = base_llm.tokenizer.decode(batch.input_ids[r, t.tokens[r, ci]]).strip()
                a, e = u.spans[b.column.name]
                assert said.endswith(u.text[a:e][-1]) and said in u.text
                if b.kind == "numeric":
                    assert int(t.tokens[r, ci].sum()) == 1 and torch.isfinite(batch.numbers[r, t.tokens[r, ci]]).all()


def test_shortfalls_name_each_weak_column_metric_and_gap():
    report = {"a": {"accuracy": 0.95, "missing_flag_accuracy": 1.0, "n": 10},
              "b": {"exact": 1.0, "mae": 0.0, "missing_flag_accuracy": 0.9, "n": 10},
              "c": {"accuracy": None, "missing_flag_accuracy": 1.0, "n": 0}}
    missed = shortfalls(report, Thresholds(0.97, 0.97, 0.97))
    assert set(missed) == {"a", "b"}
    assert missed["a"]["accuracy"] == {"value": 0.95, "threshold": 0.97, "short_by": 0.02}
    assert set(missed["b"]) == {"missing_flag_accuracy"}
    assert "a: accuracy 0.950 < 0.97" in describe_shortfalls(missed)
    assert shortfalls(report, Thresholds(0.9, 0.9, 0.9)) == {}


def test_a_value_stated_one_decimal_short_counts_as_exact_after_the_float32_scaling():
    """telco's total charges: 25.05 stated as "25.1" on a 0-8,700 range is read exactly, but the float32 [0, 1] scaling
    of the stated and the true value can put the error a hair over half a unit (it counted 11 % of the column as misread)."""
    from protocol.schema import ColumnSpec

    col = ColumnSpec(name="total", type="float", description="", min=0, max=8700, decimals=2)
    span = np.float32(col.max - col.min)
    true = (np.arange(10, 87000, 7) + 0.5) / 10                          # x.x5: one decimal short is exactly half a unit off
    stated = np.round(true, 1)
    err = np.abs((stated.astype(np.float32) - np.float32(col.min)) / span - (true / float(span)).astype(np.float32)) * float(span)
    assert (err > 0.05 * 1.001).any()                                    # the half-unit slack alone would count misses
    assert (err <= tolerance(col)).all()
    assert tolerance(col) < 0.06                                          # a cent further off is still a miss
    assert tolerance(ColumnSpec(name="n", type="int", description="", min=0, max=10)) == pytest.approx(0.5005, abs=1e-4)


def test_nothing_stated_is_an_outcome_for_nullable_columns_and_numbers_only():
    """A non-nullable categorical column always reads a level; a nullable one, or any number, may read as missing."""
    from provider_party.model.connectors import ExpertEncoder, can_be_missing

    schema = shared_words_schema()
    fe = FeatureEncoder(schema)
    assert {b.column.name for b in fe.blocks if can_be_missing(b)} == {"view", "pets", "rooms"}
    enc = init_parameters(ExpertEncoder(fe, 64, dim=32, mixer_layers=1, kernel=3), generator(0))
    with torch.no_grad():
        enc.nothing.fill_(50.0)  # "nothing stated" as strong as it can be
        h = torch.randn(4, 9, 64, generator=torch.Generator().manual_seed(1))
        numbers = torch.full((4, 9), float("nan"))
        numbers[:, 3] = 5.0
        decoded = fe.decode(enc.to_expert_input(enc(h, torch.ones(4, 9, dtype=torch.bool), numbers)).numpy())
    for b in fe.blocks:
        col = decoded[b.column.name]
        assert col.isna().all() == can_be_missing(b), b.column.name


def test_states_cached_at_several_layers_in_one_pass_equal_those_cached_one_layer_at_a_time(survey_reader):
    """The reader ablation compares layers from one frozen pass; each layer's batches must be exactly what connector
    training caches for an encoder reading that layer."""
    model, _, _ = survey_reader
    corpus = build_corpus(model.schema, n_synthetic=40, encoder_questions=12, decoder_questions=0, val_questions=4, surrogate_epochs=1, seed=5)
    both = cache_encoder_states(model, corpus, corpus.encoder_idx, 8, [12, 16], desc="", progress=False)
    alone, _ = cache_questions(model, corpus, corpus.encoder_idx, 8, candidates=None, desc="", progress=False)   # the model reads layer 12
    assert set(both) == {12, 16} and len(both[12]) == len(alone) == len(both[16]) == 2
    for (h, m, n, t), (h1, m1, n1, t1), (h16, m16, _, _) in zip(both[12], alone, both[16]):
        assert torch.equal(h, h1) and torch.equal(m, m1) and torch.equal(t.tokens, t1.tokens)
        torch.testing.assert_close(n, n1, rtol=0, atol=0, equal_nan=True)   # NaN where a token is no number
        assert h16.shape == h.shape and torch.equal(m16, m) and not torch.equal(h16, h)
