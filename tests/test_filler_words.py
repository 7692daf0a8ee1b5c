"""Filler words in place of a template's connective (`Preset.filler_rate`): off by default, exact spans when on,
and a vocabulary that never holds a negation, a number word or a word of the schema."""

from __future__ import annotations

import pytest

from client_party.datasets import DATASETS, load_schema
from protocol.verbalizer import Verbalizer
from provider_party.model.filler_words import NEGATIONS, NUMBER_WORDS, filler_vocabulary, schema_words
from provider_party.model.synthesis import synthesize

WORDS = ("apple", "river", "quietly")


@pytest.mark.parametrize("name", ["credit", "telco"])
def test_without_a_filler_rate_the_questions_are_the_ones_the_stored_connectors_were_trained_on(name):
    """No draw happens at rate 0, so the default preset's questions (and every stored set's fingerprint) stay as they were."""
    schema = load_schema(name)
    rows = synthesize(schema, n=60, seed=0)[0].to_dict("records")
    assert Verbalizer(schema, seed=5).utterances(rows) == Verbalizer(schema, seed=5, filler_rate=0.0, filler_words=WORDS).utterances(rows)
    assert Verbalizer(schema, seed=5).utterances(rows) == Verbalizer(schema, seed=5, filler_rate=1.0, filler_words=()).utterances(rows)


@pytest.mark.parametrize("name", sorted(DATASETS))
def test_fillers_stand_between_a_field_and_its_value_never_inside_it(name):
    """(That each value's span stays exact with fillers is checked with the plain questions' rules in
    test_verbalizer_synthesis.)"""
    schema = load_schema(name)
    rows = synthesize(schema, n=200, seed=1)[0].to_dict("records")
    filled = Verbalizer(schema, seed=3, filler_rate=1.0, filler_words=WORDS)
    seen = 0
    for row in rows[:60]:
        u = filled.utterance(row)
        seen += sum(u.text.count(w) for w in WORDS)
        assert not any(w in u.text[a:b] for a, b in u.spans.values() for w in WORDS), u.text
    assert seen >= 60, "with rate 1 nearly every named field should carry filler words"


def test_the_vocabulary_holds_common_words_and_none_that_could_state_or_deny_a_value(base_llm):
    tokenizer = base_llm.tokenizer
    schema = load_schema("credit")
    words = filler_vocabulary(tokenizer, schema, n=500)
    assert len(words) == len(set(words)) == 500
    assert all(w.isalpha() and w.islower() and len(w) >= 3 for w in words)
    banned = NEGATIONS | NUMBER_WORDS | schema_words(schema)
    assert not banned & set(words)
    # the tokenizer offers these as common whole words; they are left out only because of the rules above
    assert {"Ġwithout", "Ġthree", "Ġincome"} <= set(tokenizer.get_vocab())
    assert "income" in filler_vocabulary(tokenizer, load_schema("penguins"), n=5000)   # penguins have no income
    assert not {"income", "without", "three"} & set(filler_vocabulary(tokenizer, schema, n=5000))


def test_schema_words_split_names_as_people_read_them():
    words = schema_words(load_schema("attrition"))
    assert {"total", "working", "years", "satisfaction", "environment"} <= words


def test_extra_self_check_questions_keep_the_corpus_fillers():
    from provider_party.model.training_data import build_corpus

    schema = load_schema("titanic")
    corpus = build_corpus(schema, n_synthetic=300, encoder_questions=20, decoder_questions=8, val_questions=4, surrogate_epochs=1, seed=0,
                          reserve=40, verbalizer_options={"filler_rate": 1.0, "filler_words": WORDS})
    idx = corpus.add_questions(40, {"age"}, seed=9)
    assert any(w in corpus.utterances[int(i)].text for i in idx for w in WORDS)
    plain = build_corpus(schema, n_synthetic=300, encoder_questions=20, decoder_questions=8, val_questions=4, surrogate_epochs=1, seed=0)
    assert not any(w in u.text for u in plain.utterances.values() for w in WORDS)
