"""The Llamdex model: one forward pass, injection only at the slots, frozen base, exact save/load."""

from __future__ import annotations

import pytest
import torch

from protocol.encoding import FeatureEncoder
from protocol.expert_spec import ExpertSpec, build_expert
from protocol.verbalizer import Verbalizer
from provider_party.model.connectors import load_connectors, save_connectors
from provider_party.model.llamdex_model import LlamdexModel
from provider_party.model.synthesis import synthesize
from tests.conftest import weights_digest


def _questions(schema, n=6, seed=3):
    rows, _ = synthesize(schema, n=200, seed=seed)
    return Verbalizer(schema, seed=seed).questions(rows.to_dict("records")[:n])


def _expert(schema, seed):
    torch.manual_seed(seed)
    return build_expert(ExpertSpec(input_dim=FeatureEncoder(schema).dim, num_classes=2, schema_digest=schema.digest)).eval()


def test_base_weights_bit_identical_after_connector_training(base_llm, tiny_connectors):
    assert weights_digest(base_llm.model) == tiny_connectors.base_weights_before


def test_cached_question_pass_equals_the_one_pass_answer_for_every_expert(tiny_model, titanic_schema):
    """`question_pass` once, then `inject_cached` per expert: the path of attacks and multi-expert evaluation."""
    qs = _questions(titanic_schema, n=5)
    batch = tiny_model.batch(qs)
    assert batch.attention_mask.sum(1).unique().numel() > 1   # left padding is exercised
    with torch.no_grad():
        feats, ctx = tiny_model.question_pass(batch)
        for seed in (0, 1, 2):
            expert = _expert(titanic_schema, seed)
            a = tiny_model.answer(qs, expert)
            torch.testing.assert_close(tiny_model.inject_cached(ctx, expert(feats).softmax(-1)).softmax(-1), a.probs, rtol=1e-4, atol=1e-5)
            torch.testing.assert_close(expert(feats).softmax(-1), a.expert_probs)


def test_injection_changes_only_the_slots_and_what_follows(tiny_model, titanic_schema):
    """Two different experts: every position before the slots is bit-identical at every layer."""
    qs = _questions(titanic_schema, n=3)
    captured = []
    last = tiny_model.base.layers[-1]
    h = last.register_forward_hook(lambda m, a, out: captured.append((out[0] if isinstance(out, tuple) else out).clone()))
    try:
        tiny_model.answer(qs, _expert(titanic_schema, 1))
        tiny_model.answer(qs, _expert(titanic_schema, 2))
    finally:
        h.remove()
    first, second = captured
    s = tiny_model.batch(qs).slot_slice
    assert torch.equal(first[:, : s.start], second[:, : s.start])
    assert not torch.allclose(first[:, s], second[:, s])
    # and the read-out position sees the expert's output
    assert not torch.allclose(first[:, -1], second[:, -1])


def test_injection_layer_receives_decoder_states_exactly_at_slots(tiny_model, titanic_schema):
    qs = _questions(titanic_schema, n=2)
    k = tiny_model.config.inject_layer
    seen = {}

    def spy(_m, args):
        seen["h"] = args[0].clone()

    # the layer's first norm reads the residual stream after our overwrite (layer hooks run before it)
    h = tiny_model.base.layers[k].input_layernorm.register_forward_pre_hook(spy)
    try:
        ans = tiny_model.answer(qs, _expert(titanic_schema, 0))
    finally:
        h.remove()
    batch = tiny_model.batch(qs)
    expected = tiny_model.decoder(ans.expert_probs)
    torch.testing.assert_close(seen["h"][:, batch.slot_slice], expected)


def test_answers_are_distributions_over_verbalizers(tiny_model, titanic_schema):
    qs = _questions(titanic_schema, n=4)
    for ans in (tiny_model.answer(qs, _expert(titanic_schema, 0)), tiny_model.answer_base(qs)):
        assert ans.probs.shape == (4, 2)
        torch.testing.assert_close(ans.probs.sum(-1), torch.ones(4))
    assert len(set(tiny_model.verbalizer_ids)) == 2


def test_connectors_save_and_load_give_identical_outputs(tmp_path, tiny_connectors, tiny_model, base_llm, titanic_schema):
    t = tiny_connectors
    save_connectors(tmp_path / "c", t.config, t.encoder, t.decoder, titanic_schema)
    config, enc, dec, schema = load_connectors(tmp_path / "c")
    assert schema.digest == titanic_schema.digest and config.inject_layer == t.config.inject_layer
    loaded = LlamdexModel(base_llm, schema, config, enc, dec)
    qs = _questions(titanic_schema)
    expert = _expert(titanic_schema, 5)
    assert torch.equal(loaded.answer(qs, expert).probs, tiny_model.answer(qs, expert).probs)


def test_expert_swap_needs_no_retraining(tiny_model, titanic_schema):
    """Any expert with the schema's spec plugs in; the connectors are untouched."""
    before = {k: v.clone() for k, v in tiny_model.decoder.state_dict().items()}
    qs = _questions(titanic_schema, n=3)
    a = tiny_model.answer(qs, _expert(titanic_schema, 7))
    b = tiny_model.answer(qs, _expert(titanic_schema, 8))
    assert not torch.equal(a.expert_probs, b.expert_probs)
    assert all(torch.equal(before[k], v) for k, v in tiny_model.decoder.state_dict().items())


def test_connectors_refuse_another_schema(base_llm, tiny_connectors):
    from client_party.datasets import load_schema

    t = tiny_connectors
    with pytest.raises(ValueError, match="schema"):
        LlamdexModel(base_llm, load_schema("default"), t.config, t.encoder, t.decoder)


def test_connector_training_reports_metrics_and_picks_a_candidate_layer(tiny_connectors):
    m = tiny_connectors.metrics
    assert m["inject_layer"] in (22, 26)
    assert set(m["decoder_validation"]) == {"22", "26"}
    assert set(m["encoder_validation"]) == {"sex", "age", "passengerClass"}
    assert {"exact", "mae", "missing_flag_accuracy"} <= set(m["encoder_validation"]["age"])
    assert {"accuracy", "missing_flag_accuracy"} <= set(m["encoder_validation"]["sex"])
    assert {"thresholds", "passed", "missed", "retrain_rounds"} <= set(m["self_check"])
    assert m["timings"]["total_s"] > 0 and m["timings"]["frozen_pass_s"] > 0


def test_slots_come_after_the_question_so_encoder_never_sees_them(tiny_model, titanic_schema):
    batch = tiny_model.batch(_questions(titanic_schema, n=3))
    s = batch.slot_slice
    assert not batch.question_mask[:, s].any()
    assert (batch.input_ids[:, s] == tiny_model.prompts.slot_id).all()
    assert batch.question_mask.any(1).all()


@pytest.mark.parametrize("older", ["llamdex.connectors/v1", "llamdex.connectors/v2"])
def test_store_treats_an_older_connector_format_as_absent(tmp_path, tiny_connectors, base_llm, titanic_schema, older):
    """v1 (regression head for numbers) and v2 (pooled categories and missing flags) sets must be retrained,
    not loaded into the v3 encoder."""
    import json

    from provider_party.model.connector_store import ConnectorStore
    from provider_party.model.connectors import CONNECTOR_FORMAT

    assert CONNECTOR_FORMAT == "llamdex.connectors/v3"
    store = ConnectorStore(tmp_path / "store")
    store.save(base_llm, titanic_schema, tiny_connectors)
    assert store.has(base_llm, titanic_schema)
    meta = store.path_for(base_llm.model_id, titanic_schema.digest) / "connectors.json"
    raw = json.loads(meta.read_text())
    assert raw["format"] == CONNECTOR_FORMAT
    meta.write_text(json.dumps({**raw, "format": older}))
    assert not store.has(base_llm, titanic_schema)
    with pytest.raises(ValueError, match="connector format"):
        load_connectors(meta.parent)
