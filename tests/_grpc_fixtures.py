"""Shared set-up of the gRPC tests: certificates, keys, a provider on loopback with mutual TLS, artifacts."""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch

from protocol.artifact import write_artifact
from protocol.dp import DPStatement, compute_epsilon
from protocol.encoding import FeatureEncoder
from protocol.expert_spec import ExpertSpec, build_expert
from protocol.keys import generate_keypair, load_private_key
from protocol.schema import PublicSchema
from protocol.tls import TLSFiles, make_certs

ROOT = Path(__file__).resolve().parents[1]
TITANIC = ROOT / "client_party" / "schemas" / "titanic.json"


def tiny_preset():
    from provider_party.model.connector_training import Preset

    return Preset("tiny", n_synthetic=300, encoder_questions=16, decoder_questions=8, val_questions=8, encoder_epochs=1,
                  decoder_epochs=1, inject_candidates=(24,), surrogate_epochs=1)


def titanic_schema() -> PublicSchema:
    return PublicSchema.load(TITANIC)


def dp_statement(steps: int = 100, noise: float = 1.0, claim: float | None = None) -> DPStatement:
    eps = compute_epsilon(noise, 0.01, steps, 1e-5)
    return DPStatement(mechanism="dp-sgd", noise_multiplier=noise, sample_rate=0.01, steps=steps, max_grad_norm=1.0,
                       accountant="rdp", epsilon=eps if claim is None else claim, delta=1e-5, dataset_size_bucket="1k-2k")


def make_artifact(folder: Path, key: Any, *, schema: PublicSchema | None = None, dp: DPStatement | None = None,
                  hidden=(8, 4), seed: int = 0, sign: bool = True) -> Path:
    schema = schema or titanic_schema()
    torch.manual_seed(seed)
    spec = ExpertSpec(input_dim=FeatureEncoder(schema).dim, num_classes=schema.label.num_classes, hidden=hidden, schema_digest=schema.digest)
    return write_artifact(folder, build_expert(spec), schema, dp or dp_statement(), key if sign else None)


@dataclass
class Parties:
    root: Path
    certs: Path
    keys: dict[str, Any]          # signing keys by party
    pubs: dict[str, Path]
    tls: dict[str, TLSFiles]


def make_parties(root: Path, names=("provider", "alice", "bob", "mallory", "orchestrator"), hosts=("localhost", "127.0.0.1")) -> Parties:
    certs = make_certs(root / "certs", {n: list(hosts) for n in names})
    keys, pubs = {}, {}
    for n in names:
        priv, pub, _ = generate_keypair(root / "keys", n)
        keys[n], pubs[n] = load_private_key(priv), pub
    return Parties(root, root / "certs", keys, pubs, certs)


def provider_config(p: Parties, *, clients=("alice", "bob"), budgets: dict[str, float] | None = None,
                    dataset_budgets: dict[str, dict[str, float]] | None = None, callbacks: dict[str, str] | None = None, **kw: Any):
    from provider_party.service.config import ProviderConfig, RegisteredClient

    budgets, dataset_budgets, callbacks = budgets or {}, dataset_budgets or {}, callbacks or {}
    regs = tuple(RegisteredClient(c, p.keys[c].public_key(), epsilon_budget=budgets.get(c, 4.0), budgets=dataset_budgets.get(c, {}),
                                  callback=callbacks.get(c)) for c in clients)
    base = ProviderConfig(provider_id="provider", listen="127.0.0.1:0", key=p.root / "keys" / "provider.key",
                          state=p.root / "provider-state", connectors=p.root / "connectors", preload=False,
                          preset=tiny_preset(), tls=p.tls["provider"], clients=regs)
    return replace(base, **kw)


def provider_client(p: Parties, server_address: str, who: str = "alice", store: Any = None, **kw: Any):
    from client_party.provider_client import ProviderClient

    return ProviderClient(server_address, who, p.keys[who], tls=p.tls[who], provider_public_key=p.pubs["provider"],
                          receipt_store=store, **kw)


__all__ = ["Parties", "dp_statement", "make_artifact", "make_parties", "provider_client", "provider_config", "tiny_preset", "titanic_schema"]
