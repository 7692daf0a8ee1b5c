"""Dynamic batching across tenants: concurrent Asks share passes, answer as they would alone, and the
batcher's limits (queue size, deadline, shutdown) refuse precisely instead of growing or hanging.

Passes are the real `answer_mixed` on the tiny connectors. Where a test must hold a pass open to
fill the queue behind it, the runner waits on an event before calling `answer_mixed` (the gate only
controls timing; the batcher under test is real)."""

from __future__ import annotations

import hashlib
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from types import SimpleNamespace

import pytest
import torch

from protocol.artifact import pack_artifact
from protocol.encoding import FeatureEncoder
from protocol.expert_spec import ExpertSpec, build_expert
from protocol.seeding import generator, init_parameters
from protocol.verbalizer import Verbalizer
from provider_party.model.batching import BatcherError, BatchingLimits, MixedBatcher
from provider_party.model.llamdex_model import TenantQuery, answer_mixed
from provider_party.model.synthesis import synthesize

TOL = dict(rtol=1e-4, atol=1e-5)


def _questions(schema, n, seed):
    rows, _ = synthesize(schema, n=50, seed=seed)
    return Verbalizer(schema, seed=seed).questions(rows.to_dict("records")[:n])


def _expert(schema, seed, input_dim=None):
    spec = ExpertSpec(input_dim=input_dim or FeatureEncoder(schema).dim, num_classes=schema.label.num_classes, schema_digest=schema.digest)
    return init_parameters(build_expert(spec), generator(seed)).eval()


def _rows(model, expert, n, seed):
    return [TenantQuery(q, model, expert) for q in _questions(model.schema, n, seed)]


def _assert_alone(got, rows):
    alone = answer_mixed(rows)
    assert len(got) == len(alone)
    for g, a in zip(got, alone):
        torch.testing.assert_close(g.probs, a.probs, **TOL)
        if a.expert_probs is None:
            assert g.expert_probs is None
        else:
            torch.testing.assert_close(g.expert_probs, a.expert_probs, **TOL)


class GatedRunner:
    """`answer_mixed`, but each pass first waits for `release` (so a test can fill the queue behind it)."""

    def __init__(self):
        self.entered, self.release, self.calls = threading.Event(), threading.Event(), []

    def __call__(self, rows):
        self.calls.append(len(rows))
        self.entered.set()
        assert self.release.wait(60), "the test never released the pass"
        return answer_mixed(rows)


def _hold_a_pass(batcher, runner, rows):
    """Submits `rows` and returns once the worker is inside their pass (the queue is empty again)."""
    future = batcher.submit(rows)
    assert runner.entered.wait(30)
    return future


# --- coalescing and answers ------------------------------------------------------------------------------

def test_concurrent_callers_of_different_clients_and_schemas_share_one_pass(tiny_model, tiny_default_model):
    requests = [_rows(tiny_model, _expert(tiny_model.schema, 1), 3, 1), _rows(tiny_model, _expert(tiny_model.schema, 2), 2, 2),
                _rows(tiny_default_model, _expert(tiny_default_model.schema, 3), 3, 3),
                [TenantQuery(q, tiny_default_model, None) for q in _questions(tiny_default_model.schema, 2, 4)]]
    total = sum(len(r) for r in requests)
    # the pass starts when every row is there (max_batch_rows = total); the long wait is only a safety net
    batcher = MixedBatcher(BatchingLimits(max_wait_ms=30_000, max_batch_rows=total))
    with ThreadPoolExecutor(len(requests)) as pool:
        got = list(pool.map(batcher.answer, requests))
    stats = batcher.stats()
    assert (stats.passes, stats.coalesced_passes, stats.max_requests_in_pass, stats.rows) == (1, 1, 4, total)
    for answers, rows in zip(got, requests):
        _assert_alone(answers, rows)
    batcher.close()


def test_a_lone_request_waits_for_company_only_max_wait_ms_not_for_a_full_pass(tiny_model):
    runner = GatedRunner()
    runner.release.set()
    batcher = MixedBatcher(BatchingLimits(max_wait_ms=200, max_batch_rows=32), run=runner)
    rows = _rows(tiny_model, _expert(tiny_model.schema, 1), 2, 5)
    t = time.perf_counter()
    future = batcher.submit(rows)
    assert runner.entered.wait(30), "a lone request must not wait for the 32-row cap"
    assert time.perf_counter() - t >= 0.19                 # it did wait max_wait_ms for others to join
    _assert_alone(future.result(60), rows)
    assert batcher.stats().passes == 1
    batcher.close()


def test_a_pass_that_fails_is_retried_request_by_request_so_only_the_bad_request_fails(tiny_model):
    good = _rows(tiny_model, _expert(tiny_model.schema, 1), 2, 6)
    bad = _rows(tiny_model, _expert(tiny_model.schema, 7, input_dim=3), 1, 7)   # an expert whose input size fits no encoder
    runner = GatedRunner()
    batcher = MixedBatcher(BatchingLimits(max_wait_ms=30_000, max_batch_rows=3), run=runner)
    full = _rows(tiny_model, _expert(tiny_model.schema, 1), 3, 6)     # a full pass starts at once, whatever the machine's load
    warm = _hold_a_pass(batcher, runner, full)
    futures = [batcher.submit(good), batcher.submit(bad)]   # queued together behind the held pass (3 rows: full too)
    runner.release.set()
    _assert_alone(warm.result(60), full)
    _assert_alone(futures[0].result(60), good)
    with pytest.raises(RuntimeError):
        futures[1].result(60)
    stats = batcher.stats()
    assert stats.retried_alone == 2 and stats.failed == 1
    batcher.close()


# --- limits ----------------------------------------------------------------------------------------------

def test_a_full_queue_refuses_at_once_and_keeps_what_it_holds(tiny_model):
    expert = _expert(tiny_model.schema, 1)
    runner = GatedRunner()
    batcher = MixedBatcher(BatchingLimits(max_wait_ms=0, max_batch_rows=8, max_queued_rows=4), run=runner)
    first = _hold_a_pass(batcher, runner, _rows(tiny_model, expert, 2, 1))
    queued = batcher.submit(_rows(tiny_model, expert, 3, 2))
    with pytest.raises(BatcherError) as refused:
        batcher.submit(_rows(tiny_model, expert, 2, 3))
    assert refused.value.code == "QUEUE_FULL" and refused.value.rule == "batch_max_queued_rows"
    assert "holds 3 of at most 4 rows" in str(refused.value) and "retry" in str(refused.value)
    assert batcher.queued_rows() == 3                      # the refusal changed nothing queued
    runner.release.set()
    _assert_alone(first.result(60), _rows(tiny_model, expert, 2, 1))
    _assert_alone(queued.result(60), _rows(tiny_model, expert, 3, 2))
    assert batcher.stats().refused_full == 1 and batcher.queued_rows() == 0
    batcher.close()


def test_a_request_whose_deadline_passes_in_the_queue_is_dropped_unanswered(tiny_model):
    expert = _expert(tiny_model.schema, 1)
    runner = GatedRunner()
    batcher = MixedBatcher(BatchingLimits(max_wait_ms=0, max_batch_rows=8), run=runner)
    first = _hold_a_pass(batcher, runner, _rows(tiny_model, expert, 1, 1))
    late = batcher.submit(_rows(tiny_model, expert, 2, 2), deadline_s=0.05)
    t = time.perf_counter()
    with pytest.raises(BatcherError) as waited:            # a caller that waits gets its error at its deadline
        batcher.answer(_rows(tiny_model, expert, 1, 3), deadline_s=0.2)
    assert waited.value.code == "DEADLINE_EXCEEDED" and time.perf_counter() - t < 5
    runner.release.set()
    first.result(60)
    with pytest.raises(BatcherError) as dropped:
        late.result(60)
    assert dropped.value.code == "DEADLINE_EXCEEDED" and "deadline of 0.05 s" in str(dropped.value)
    time.sleep(0.2)
    assert runner.calls == [1]                             # neither expired request ever reached a pass
    assert batcher.stats().expired == 1 and batcher.queued_rows() == 0
    batcher.close()


def test_close_answers_what_is_queued_then_refuses_new_requests(tiny_model):
    expert = _expert(tiny_model.schema, 1)
    runner = GatedRunner()
    batcher = MixedBatcher(BatchingLimits(max_wait_ms=0), run=runner, name="llamdex-batcher-drain")
    first = _hold_a_pass(batcher, runner, _rows(tiny_model, expert, 1, 1))
    queued = batcher.submit(_rows(tiny_model, expert, 2, 2))
    closer = threading.Thread(target=batcher.close)
    closer.start()
    time.sleep(0.05)
    with pytest.raises(BatcherError) as refused:
        batcher.submit(_rows(tiny_model, expert, 1, 3))
    assert refused.value.code == "SHUTTING_DOWN"
    runner.release.set()
    closer.join(60)
    assert not closer.is_alive()
    first.result(0)
    _assert_alone(queued.result(0), _rows(tiny_model, expert, 2, 2))
    assert not any(t.name == "llamdex-batcher-drain" and t.is_alive() for t in threading.enumerate())   # the worker ended


def test_close_without_draining_fails_queued_requests_with_shutting_down(tiny_model):
    expert = _expert(tiny_model.schema, 1)
    runner = GatedRunner()
    batcher = MixedBatcher(BatchingLimits(max_wait_ms=0), run=runner, name="llamdex-batcher-nodrain")
    first = _hold_a_pass(batcher, runner, _rows(tiny_model, expert, 1, 1))
    queued = batcher.submit(_rows(tiny_model, expert, 2, 2))
    closer = threading.Thread(target=batcher.close, kwargs={"drain": False})
    closer.start()
    with pytest.raises(BatcherError) as failed:
        queued.result(30)
    assert failed.value.code == "SHUTTING_DOWN"
    runner.release.set()
    closer.join(60)
    first.result(0)                                        # the pass already running still finishes
    assert runner.calls == [1]


def test_batching_limits_refuse_nonsense():
    for bad in (dict(max_wait_ms=-1), dict(max_batch_rows=0), dict(max_queued_rows=2.5), dict(deadline_s=0)):
        with pytest.raises(ValueError):
            BatchingLimits(**bad)


# --- through the provider ------------------------------------------------------------------------------

def _upload(party, client, key, folder, schema, seed):
    from tests._grpc_fixtures import make_artifact

    tar = pack_artifact(make_artifact(folder, key, schema=schema, seed=seed))
    h = SimpleNamespace(upload_id=f"u{seed:019d}", dataset_id=schema.name, artifact_name="expert", total_bytes=len(tar),
                        artifact_sha256=hashlib.sha256(tar).hexdigest(), resume_offset=0)
    session = party.uploads.open(client, h)
    session.write(0, tar, hashlib.sha256(tar).hexdigest(), 1 << 22)
    session.close()
    return party.finalize_upload(session.record, client)


@pytest.fixture
def serving_provider(tmp_path, monkeypatch, base_llm, tiny_model, tiny_default_model):
    """A real ProviderParty (keys, signed uploads, ledger) with three clients over two schemas; the session's
    base LLM stands in for a second load of the same model, and the tiny connectors sit in its store."""
    import provider_party.model.base_llm as base_module
    from provider_party.model.connector_store import ConnectorStore
    from provider_party.model.connector_training import TrainedConnectors
    from provider_party.service.config import ProviderLimits
    from provider_party.service.core import ProviderParty
    from tests._grpc_fixtures import make_parties, provider_config

    monkeypatch.setattr(base_module, "load_base_llm", lambda *a, **k: base_llm)
    p = make_parties(tmp_path, names=("provider", "alice", "bob", "carol"))
    per_ask = 2
    limits = replace(ProviderLimits(), batch_max_wait_ms=30_000, batch_max_rows=3 * per_ask + per_ask)   # alice, bob, carol + carol's base rows
    cfg = provider_config(p, clients=("alice", "bob", "carol"), limits=limits)
    store = ConnectorStore(cfg.connectors)
    for m in (tiny_model, tiny_default_model):
        store.save(base_llm, m.schema, TrainedConnectors(m.config, m.encoder, m.decoder, surrogate=None))
    party = ProviderParty(cfg)
    schemas = {"alice": tiny_model.schema, "bob": tiny_model.schema, "carol": tiny_default_model.schema}
    for i, (name, schema) in enumerate(schemas.items()):
        _upload(party, cfg.client(name), p.keys[name], tmp_path / f"artifact-{name}", schema, seed=i + 1)
    yield SimpleNamespace(party=party, cfg=cfg, schemas=schemas, per_ask=per_ask)
    party.close()


def test_concurrent_asks_through_the_provider_share_one_pass_and_answer_as_alone(serving_provider):
    s = serving_provider
    party, cfg = s.party, s.cfg
    asks = {name: _questions(schema, s.per_ask, seed=10 + i) for i, (name, schema) in enumerate(s.schemas.items())}

    def ask(name):
        return party.ask(cfg.client(name), asks[name], include_base=(name == "carol"))

    with ThreadPoolExecutor(3) as pool:
        results = dict(zip(asks, pool.map(ask, asks)))
    stats = party.batcher.stats()
    assert (stats.passes, stats.max_requests_in_pass, stats.rows) == (1, 3, 4 * s.per_ask)
    for name, result in results.items():
        queries, stored = party.tenant_queries(cfg.client(name), asks[name])
        assert result.artifact_digest == stored.artifact_digest and result.schema.digest == s.schemas[name].digest
        _assert_alone(result.answers, queries)
        if name == "carol":
            _assert_alone(result.base, [TenantQuery(q.question, q.model, None) for q in queries])
        else:
            assert result.base is None


def test_an_ask_after_close_is_refused_with_shutting_down(serving_provider):
    s = serving_provider
    s.party.close()
    with pytest.raises(BatcherError) as refused:
        s.party.ask(s.cfg.client("alice"), _questions(s.schemas["alice"], 1, seed=1))
    assert refused.value.code == "SHUTTING_DOWN"
