"""A stored connector set is served only for the question format it was trained on.

An upgrade that rewrites a schema's questions (verbalizer templates, prompt, tokenizer) must make the
store retrain that schema's set rather than serve an encoder that misreads the new text.
"""

import json

import pytest

import protocol.verbalizer as verbalizer
from client_party.datasets import load_schema
from protocol.verbalizer import Verbalizer, with_article
from provider_party.model.connector_store import ConnectorStore
from provider_party.model.question_format import probe_rows, question_format_fingerprint


def test_fingerprint_is_stable_and_specific_to_the_schema(base_llm, titanic_schema):
    a = question_format_fingerprint(base_llm.tokenizer, titanic_schema)
    assert a == question_format_fingerprint(base_llm.tokenizer, titanic_schema)
    assert a.startswith("sha256:") and len(a) == 7 + 64
    assert a != question_format_fingerprint(base_llm.tokenizer, load_schema("default"))


def test_probe_rows_visit_every_level_and_missing_values():
    schema = load_schema("credit")
    rows = probe_rows(schema)
    for col in schema.columns:
        seen = {r[col.name] for r in rows}
        if col.is_numeric:
            assert len(seen) > 20 and col.min in seen
        else:
            assert set(col.levels) <= seen
        assert (None in seen) == col.nullable


def test_fingerprint_moves_when_the_verbalizer_writes_other_text(base_llm, titanic_schema, monkeypatch):
    before = question_format_fingerprint(base_llm.tokenizer, titanic_schema)
    monkeypatch.setattr(verbalizer, "INTROS", tuple(t.replace("Consider", "Think about") for t in verbalizer.INTROS))
    assert question_format_fingerprint(base_llm.tokenizer, titanic_schema) != before


def test_store_retrains_a_set_trained_on_another_question_format(tmp_path, tiny_connectors, base_llm, titanic_schema, monkeypatch):
    store = ConnectorStore(tmp_path / "store")
    store.save(base_llm, titanic_schema, tiny_connectors)
    meta = store.path_for(base_llm.model_id, titanic_schema.digest) / "connectors.json"
    assert json.loads(meta.read_text())["question_format"] == question_format_fingerprint(base_llm.tokenizer, titanic_schema)
    assert store.has(base_llm, titanic_schema) and store.unusable(base_llm, titanic_schema) is None

    # the same set, after an upgrade that writes the schema's questions differently
    monkeypatch.setattr(verbalizer, "INTROS", ("Think about {a_subject}.",))
    upgraded = ConnectorStore(tmp_path / "store")
    assert not upgraded.has(base_llm, titanic_schema)
    assert "written differently" in upgraded.unusable(base_llm, titanic_schema)
    assert meta.is_file()   # nothing deleted: the set stays until a retrain replaces it

    # a set saved before fingerprints existed is treated the same way
    monkeypatch.undo()
    raw = json.loads(meta.read_text())
    del raw["question_format"]
    meta.write_text(json.dumps(raw))
    assert not ConnectorStore(tmp_path / "store").has(base_llm, titanic_schema)
    assert ConnectorStore(tmp_path / "empty").unusable(base_llm, titanic_schema) == "no connectors stored"


def test_asking_with_stale_connectors_is_refused_with_the_reason(tmp_path, tiny_connectors, base_llm, titanic_schema, monkeypatch):
    """The provider answers NOT_CUSTOMIZED with why, instead of serving a reader trained on other text."""
    import provider_party.model.base_llm as base_module
    from provider_party.service.core import ProviderParty
    from protocol.rpc_errors import RpcError
    from tests._grpc_fixtures import make_parties, provider_config

    monkeypatch.setattr(base_module, "load_base_llm", lambda *a, **k: base_llm)
    cfg = provider_config(make_parties(tmp_path, names=("provider", "alice")), clients=("alice",))
    ConnectorStore(cfg.connectors).save(base_llm, titanic_schema, tiny_connectors)
    monkeypatch.setattr(verbalizer, "INTROS", ("Think about {a_subject}.",))
    party = ProviderParty(cfg)
    try:
        assert party.schemas_ready() == [titanic_schema.digest]   # before the base LLM loads, the format cannot be checked
        with pytest.raises(RpcError, match="written differently") as e:
            party.model_for(titanic_schema)
        assert e.value.code == "NOT_CUSTOMIZED"
        assert party.schemas_ready() == []   # once it is loaded, Hello no longer announces the set Ask refuses
    finally:
        party.close()


def test_the_ready_list_names_schema_digests_of_sets_that_can_serve(tmp_path, tiny_connectors, base_llm, titanic_schema, monkeypatch):
    import shutil

    store = ConnectorStore(tmp_path / "store")
    assert store.ready_schemas(base_llm.model_id, base_llm) == []
    final = store.save(base_llm, titanic_schema, tiny_connectors)
    assert store.ready_schemas(base_llm.model_id) == store.ready_schemas(base_llm.model_id, base_llm) == [titanic_schema.digest]
    # a save cut short, a folder whose schema is unreadable, and a set filed under another schema's folder are not sets
    shutil.copytree(final, final.with_name(final.name + ".tmp"))
    (final.with_name("0" * 32) / "connectors.json").parent.mkdir()
    (final.with_name("0" * 32) / "connectors.json").write_text("{}")
    shutil.copytree(final, final.with_name("1" * 32))
    assert store.ready_schemas(base_llm.model_id, base_llm) == [titanic_schema.digest]
    # after an upgrade that writes the questions differently, only the unchecked listing still names it
    monkeypatch.setattr(verbalizer, "INTROS", ("Think about {a_subject}.",))
    upgraded = ConnectorStore(tmp_path / "store")
    assert upgraded.ready_schemas(base_llm.model_id, base_llm) == []
    assert upgraded.ready_schemas(base_llm.model_id) == [titanic_schema.digest]


@pytest.mark.parametrize("phrase, expected", [
    ("employee", "an employee"), ("passenger", "a passenger"), ("loan applicant", "a loan applicant"), ("user", "a user"),
    ("hour", "an hour"), ("Other", "an Other"), ("one-off", "a one-off"), ("item", "an item"), ("Yes", "a Yes"),
])
def test_indefinite_article(phrase, expected):
    assert with_article(phrase) == expected


def test_questions_about_an_employee_read_as_people_write_them():
    schema = load_schema("attrition")
    text = " ".join(u.text for u in Verbalizer(schema, seed=0).utterances(probe_rows(schema, 200)))
    assert "an employee" in text and "a employee" not in text
