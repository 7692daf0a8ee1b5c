"""A label of three classes whose answer words are several tokens long (penguins: Adelie, Chinstrap, Gentoo), end to
end with the tiny preset; and answer words that share a first token, refused with the words and the fix."""

from __future__ import annotations

import pytest

from client_party.datasets import load_schema
from protocol.errors import SchemaError
from protocol.schema import PublicSchema
from tests.test_pipeline import assert_llamdex_follows_its_expert


@pytest.fixture(scope="module")
def penguins_store(tmp_path_factory, base_llm, tiny_preset):
    from dataclasses import replace

    from provider_party.model.connector_store import ConnectorStore
    from provider_party.model.connector_training import train_connectors

    schema = load_schema("penguins")
    store = ConnectorStore(tmp_path_factory.mktemp("connectors"))
    # three classes ask more of the decoder than two: the tiny preset with a few more decoder steps, so that the
    # expert's class (not only its confidence) reaches the answer on every question
    preset = replace(tiny_preset, name="tiny-3-classes", decoder_questions=32, decoder_epochs=3)
    store.save(base_llm, schema, train_connectors(base_llm, schema, preset, seed=0, progress=False))
    return store


def test_three_answer_words_of_several_tokens_are_read_at_three_distinct_first_tokens(base_llm):
    from provider_party.model.prompting import PromptBuilder

    schema = load_schema("penguins")
    pb = PromptBuilder(base_llm.tokenizer, schema)
    assert schema.label.verbalizers == ("Adelie", "Chinstrap", "Gentoo")
    for word, first in zip(schema.label.verbalizers, pb.verbalizer_ids):
        tokens = pb._encode(pb._tail_text + word)[len(pb.suffix_ids):]
        assert len(tokens) >= 2 and tokens[0] == first  # several tokens; the first is where the answer is read
    assert len(set(pb.verbalizer_ids)) == 3


def test_answer_words_that_share_a_first_token_are_refused_with_the_words_and_the_fix(base_llm):
    from provider_party.model.prompting import PromptBuilder

    d = load_schema("penguins").to_dict()
    d["label"]["verbalizers"] = ["Very small", "Very large", "Medium"]
    with pytest.raises(SchemaError) as err:
        PromptBuilder(base_llm.tokenizer, PublicSchema.from_dict(d))
    msg = str(err.value)
    assert "'Very small' and 'Very large' both start with the token 'Very'" in msg
    assert "label 'species'" in msg and "change 'verbalizers'" in msg and "llamdex schema check" in msg


# Slow (62 s with its fixture): the default run keeps three classes end to end through the two-party demo smoke
# (tests/test_two_party_demo.py, penguins over gRPC), so this in-process twin runs with `make test-slow`.
@pytest.mark.slow
def test_multiclass_pipeline_end_to_end(penguins_store):
    from simulations.pipeline import run_pipeline

    res = run_pipeline("penguins", (None,), preset="quick", seed=0, max_test=24, connectors_root=penguins_store.root,
                       progress=False, log=lambda *_: None)
    assert not res.connectors_trained_now and res.dataset == "penguins" and res.n_test == 24
    rows = {r["method"]: r for r in res.rows}
    assert set(rows) == {"base_llm", "expert", "llamdex", "majority_class"}
    assert rows["expert"]["accuracy"] >= 0.9  # the three species are well separated by bill and flipper measurements
    assert rows["majority_class"]["accuracy"] < 0.5  # three classes, none a majority of the test split
    answer = res.model.answer(res.questions[:5], res.experts["no-dp"])
    assert answer.probs.shape == (5, 3) and answer.expert_probs.shape == (5, 3)
    assert answer.probs.sum(-1).sub(1).abs().max() < 1e-5
    assert_llamdex_follows_its_expert(res.model, res.experts["no-dp"], res.questions)
