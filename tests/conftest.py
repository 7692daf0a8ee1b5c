"""Shared fixtures: the embedded base LLM and one tiny connector set, trained once per session."""

from __future__ import annotations

import protocol  # noqa: F401 - before any test module imports grpc: the TLS 1.3-only policy (protocol.tls_policy)
import pytest

TINY = dict(n_synthetic=600, encoder_questions=32, decoder_questions=16, val_questions=8, encoder_epochs=2,
            decoder_epochs=1, inject_candidates=(22, 26), surrogate_epochs=2)


def weights_digest(model) -> str:
    import hashlib

    h = hashlib.sha256()
    for k, v in sorted(model.state_dict().items()):
        h.update(k.encode())
        h.update(v.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


@pytest.fixture(scope="session")
def tiny_preset():
    from provider_party.model.connector_training import Preset

    return Preset("tiny", **TINY)


@pytest.fixture(scope="session")
def base_llm():
    from provider_party.model.base_llm import load_base_llm

    return load_base_llm()


@pytest.fixture(scope="session")
def titanic_schema():
    from client_party.datasets import load_schema

    return load_schema("titanic")


@pytest.fixture(scope="session")
def tiny_connectors(base_llm, titanic_schema, tiny_preset):
    """Connectors trained on a handful of synthetic questions; enough to exercise every code path."""
    from provider_party.model.connector_training import train_connectors

    before = weights_digest(base_llm.model)
    trained = train_connectors(base_llm, titanic_schema, tiny_preset, seed=0, progress=False)
    trained.base_weights_before = before  # checked by test_base_weights_bit_identical_after_connector_training
    return trained


@pytest.fixture(scope="session")
def tiny_model(base_llm, titanic_schema, tiny_connectors):
    from provider_party.model.llamdex_model import LlamdexModel

    t = tiny_connectors
    return LlamdexModel(base_llm, titanic_schema, t.config, t.encoder, t.decoder)


@pytest.fixture(scope="session")
def default_schema():
    from client_party.datasets import load_schema

    return load_schema("default")


@pytest.fixture(scope="session")
def tiny_default_model(base_llm, default_schema, tiny_preset):
    """A second schema's tiny connectors (ISLR Default: a boolean and two numbers), for mixed-tenant batches."""
    from dataclasses import replace

    from provider_party.model.connector_training import train_connectors
    from provider_party.model.llamdex_model import LlamdexModel

    t = train_connectors(base_llm, default_schema, replace(tiny_preset, inject_candidates=(20,)), seed=1, progress=False)
    return LlamdexModel(base_llm, default_schema, t.config, t.encoder, t.decoder)


@pytest.fixture(scope="module")
def one_torch_thread():
    """One intra-op thread for a module that asks for it (`pytest.mark.usefixtures`): on a busy 2-core machine two threads per process thrash (measured 2-3x slower)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
