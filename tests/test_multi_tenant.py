"""Multi-tenant serving: one base LLM, rows of different clients and schemas in one forward pass.

A mixed batch must give every row the answer it gets alone (within float tolerance: only the padding
width differs), and concurrent callers must not disturb each other (nothing shared is mutated)."""

from __future__ import annotations

import threading

import torch

from protocol.encoding import FeatureEncoder
from protocol.expert_spec import ExpertSpec, build_expert
from protocol.seeding import generator, init_parameters
from protocol.verbalizer import Verbalizer
from provider_party.model.llamdex_model import TenantQuery, answer_mixed
from provider_party.model.synthesis import synthesize


def _questions(schema, n, seed):
    rows, _ = synthesize(schema, n=100, seed=seed)
    return Verbalizer(schema, seed=seed).questions(rows.to_dict("records")[:n])


def _expert(schema, seed):
    spec = ExpertSpec(input_dim=FeatureEncoder(schema).dim, num_classes=schema.label.num_classes, schema_digest=schema.digest)
    return init_parameters(build_expert(spec), generator(seed)).eval()


def _tenants(tiny_model, tiny_default_model):
    titanic, default = tiny_model.schema, tiny_default_model.schema
    return [
        ("alice", tiny_model, _expert(titanic, 1), _questions(titanic, 3, 1)),
        ("bob", tiny_model, _expert(titanic, 2), _questions(titanic, 2, 2)),
        ("carol", tiny_default_model, _expert(default, 3), _questions(default, 3, 3)),
        ("base", tiny_default_model, None, _questions(default, 2, 4)),
    ]


def test_a_mixed_batch_answers_each_row_as_it_would_be_answered_alone(tiny_model, tiny_default_model):
    tenants = _tenants(tiny_model, tiny_default_model)
    mixed_rows = [TenantQuery(q, m, e) for _, m, e, qs in tenants for q in qs]
    order = torch.randperm(len(mixed_rows), generator=generator(0)).tolist()   # interleave tenants and schemas
    mixed = answer_mixed([mixed_rows[i] for i in order])
    by_row = {i: a for i, a in zip(order, mixed)}
    i = 0
    for name, model, expert, qs in tenants:
        alone = model.answer(qs, expert) if expert is not None else model.answer_base(qs)
        for r in range(len(qs)):
            got = by_row[i]
            assert got.probs.shape == (model.schema.label.num_classes,), name
            torch.testing.assert_close(got.probs, alone.probs[r], rtol=1e-4, atol=1e-5, msg=f"{name} row {r}")
            if expert is None:
                assert got.expert_probs is None
            else:
                torch.testing.assert_close(got.expert_probs, alone.expert_probs[r], rtol=1e-4, atol=1e-5)
            i += 1


def test_concurrent_callers_get_the_answers_they_get_alone(tiny_model, tiny_default_model):
    tenants = [t for t in _tenants(tiny_model, tiny_default_model) if t[2] is not None]
    expected = {name: model.answer(qs, expert).probs for name, model, expert, qs in tenants}
    got, errors = {}, []

    def ask(name, model, expert, qs):
        try:
            for _ in range(3):
                got.setdefault(name, []).append(model.answer(qs, expert).probs)
        except Exception as e:  # noqa: BLE001 - reported below
            errors.append(e)

    threads = [threading.Thread(target=ask, args=t) for t in tenants]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not errors
    for name, runs in got.items():
        assert len(runs) == 3
        for probs in runs:
            torch.testing.assert_close(probs, expected[name], rtol=1e-5, atol=1e-6)


def test_serving_many_tenants_changes_no_shared_module_and_keeps_one_base(base_llm, tiny_model, tiny_default_model):
    """Memory grows by experts and connectors only: every schema's model holds the one base LLM, and passes of
    many tenants (concurrent too) leave every shared weight, buffer and mode exactly as they were."""
    from tests.conftest import weights_digest

    tenants = _tenants(tiny_model, tiny_default_model)
    shared = {"base": base_llm.model, "titanic encoder": tiny_model.encoder, "titanic decoder": tiny_model.decoder,
              "default encoder": tiny_default_model.encoder, "default decoder": tiny_default_model.decoder,
              **{f"{name} expert": e for name, _, e, _ in tenants if e is not None}}
    before = {k: (weights_digest(m), m.training) for k, m in shared.items()}
    storage = sorted(p.data_ptr() for p in base_llm.model.parameters())
    rows = [TenantQuery(q, m, e) for _, m, e, qs in tenants for q in qs]
    threads = [threading.Thread(target=answer_mixed, args=(rows[i::2],)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert tiny_model.base is tiny_default_model.base is base_llm
    assert tiny_model.lm.inner is tiny_default_model.lm.inner is base_llm.model.model
    assert sorted(p.data_ptr() for p in base_llm.model.parameters()) == storage
    assert {k: (weights_digest(m), m.training) for k, m in shared.items()} == before


def test_the_layer_runner_matches_the_models_own_forward_with_and_without_padding(base_llm, tiny_model):
    """One unpadded question runs causal attention without a mask (SDPA's fused kernels); a padded batch runs the
    explicit mask. Both must read what the model's own forward reads at the answer position."""
    qs = _questions(tiny_model.schema, 3, 5)
    assert len({len(tiny_model.batch([q], with_slots=False).input_ids[0]) for q in qs}) > 1   # the batch below is padded
    ids = tiny_model.verbalizer_ids
    for batch_questions in ([qs[0]], qs):
        batch = tiny_model.batch(batch_questions, with_slots=False)
        with torch.inference_mode():
            logits = base_llm.model(input_ids=batch.input_ids, attention_mask=batch.attention_mask, position_ids=batch.position_ids).logits
        expected = logits[:, -1, ids].float().softmax(-1)
        torch.testing.assert_close(tiny_model.answer_base(batch_questions).probs, expected, rtol=1e-4, atol=1e-5)
    unpadded = tiny_model.lm.inputs(torch.ones(1, 5, dtype=torch.long), torch.arange(5)[None])
    assert unpadded.mask is None


def _brute_force_cost(lengths, split_cost):
    """The cheapest layout over every way of cutting the length-sorted rows (what length_buckets must find)."""
    import itertools

    s, best = sorted(lengths), float("inf")
    for cuts in itertools.product([False, True], repeat=len(s) - 1):
        cost, start = 0.0, 0
        for i, c in enumerate([*cuts, True]):
            if c:
                cost += (i + 1 - start) * s[i] + (split_cost if start else 0.0)
                start = i + 1
        best = min(best, cost)
    return best


def test_length_buckets_find_the_cheapest_layout_and_keep_every_row_once():
    import random

    from provider_party.model.llamdex_model import length_buckets

    rng = random.Random(0)
    for _ in range(60):
        lengths = [rng.choice([84, 97, 146]) + rng.randint(-15, 15) for _ in range(rng.randint(1, 8))]
        split_cost = rng.choice([0, 8, 32, 200])
        buckets = length_buckets(lengths, split_cost)
        assert sorted(i for b in buckets for i in b) == list(range(len(lengths)))
        cost = sum(len(b) * max(lengths[i] for i in b) for b in buckets) + split_cost * (len(buckets) - 1)
        assert cost == _brute_force_cost(lengths, split_cost)
    assert length_buckets([80, 150], float("inf")) == [[0, 1]]           # never split
    assert length_buckets([84, 85, 86], 32) == [[0, 1, 2]]               # padding cheaper than a sub-pass


def test_sub_batches_of_similar_length_answer_as_one_padded_pass(tiny_model, tiny_default_model):
    import math

    rows = [TenantQuery(q, m, e) for _, m, e, qs in _tenants(tiny_model, tiny_default_model) for q in qs]
    split = answer_mixed(rows, split_cost=0)                           # as many sub-batches as lengths
    whole = answer_mixed(rows, split_cost=math.inf)                    # one padded pass
    for a, b in zip(split, whole):
        torch.testing.assert_close(a.probs, b.probs, rtol=1e-4, atol=1e-5)
        assert (a.expert_probs is None) == (b.expert_probs is None)
