"""One data owner of the federation: its key, its part of a table, its signed experts and its receipts.

A `SimulatedClient` is a `client_party.service.ClientParty` (key, workspace, receipt store) whose table
is its partition of a shared table, so its training and signing follow `ClientParty.train` step by step
with the client's own helpers: encode the training rows, train the expert (`train_expert`: DP-SGD with
Opacus at the client's own ε, or no DP), write and sign the artifact (`write_artifact`, OpenSSF
model-signing format, the client's ECDSA P-256 key), and hand over the signed upload stream. Its
workspace persists between Flower messages (a ClientApp object does not); the private rows never leave
this object, only the artifact, the questions it chooses to ask and its own scores do.
"""

from __future__ import annotations

import functools
import json
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from simulations.flower.scenario import Scenario

FEDERATED_SUFFIX = "-fedavg"


@dataclass
class ClientData:
    table_id: str
    schema: Any
    train: Any          # pandas DataFrame: rows the expert trains on
    heldout: Any        # rows kept for evaluation


@dataclass
class TrainedUpload:
    """What a client hands over after training: the signed upload stream and what it reports about it."""

    messages: list[bytes]
    artifact_digest: str
    dataset_id: str
    epsilon: float | None
    delta: float
    n_train: int
    n_heldout: int
    expert_accuracy: float
    seconds: float


@functools.lru_cache(maxsize=8)
def _load_table(ref: Any) -> tuple[Any, Any]:
    """A table (a `TableRef`, hashable) loaded once per process (a simulation engine worker serves many clients)."""
    return ref.load()


class SimulatedClient:
    def __init__(self, scenario: Scenario, partition_id: int, out_dir: Path, workspace: str | Path | None = None):
        if not 0 <= partition_id < scenario.clients:
            raise ValueError(f"partition-id {partition_id} is outside 0..{scenario.clients - 1}; start one SuperNode per client "
                             f"with --node-config 'partition-id=I num-partitions={scenario.clients}'")
        self.scenario, self.index = scenario, partition_id
        self.client_id = scenario.client_id(partition_id)
        self.workspace = Path(workspace) if workspace else Path(out_dir) / "clients" / self.client_id
        self.key_path = self.workspace / "keys" / f"{self.client_id}.key"
        self.provider_key_path = self.workspace / "keys" / "provider.pub"

    # --- registration ------------------------------------------------------------------------------------
    def register(self, provider_public_key_pem: bytes) -> dict[str, Any]:
        """Makes this client's signing key (once) and pins the provider's receipt key; returns what the operator registers."""
        from protocol.keys import generate_private_key, load_public_key, public_key_pem, save_private_key, save_public_key

        (self.workspace / "keys").mkdir(parents=True, exist_ok=True)
        if not self.key_path.exists():
            key = generate_private_key()   # ECDSA P-256
            save_private_key(key, self.key_path)
            save_public_key(key, self.key_path.with_suffix(".pub"))
        save_public_key(load_public_key(provider_public_key_pem), self.provider_key_path)
        data = self.data()
        return {"client-id": self.client_id, "public-key": public_key_pem(self.party().key), "dataset-id": data.table_id,
                "schema-digest": data.schema.digest, "partition-id": self.index}

    def party(self) -> Any:
        """The ClientParty behind this client: its key, its workspace and its receipt store."""
        from client_party.config import ClientConfig
        from client_party.service import ClientParty

        return ClientParty(ClientConfig(client_id=self.client_id, key=self.key_path, workspace=self.workspace,
                                        provider_public_key=self.provider_key_path))

    # --- data --------------------------------------------------------------------------------------------
    def data(self) -> ClientData:
        from simulations.flower.partitioning import client_partition, split_heldout

        s, t = self.scenario, self.scenario.table_index(self.index)
        ref = s.table_refs()[t]
        df, schema = _load_table(ref)
        part, n_parts = s.part_of(self.index)
        mine = client_partition(df, schema.label.name, part, n_parts, s.partition, s.alpha, seed=s.seed * 1009 + t)
        train, heldout = split_heldout(mine, schema.label.name, s.test_size, seed=s.seed + self.index)
        return ClientData(ref.id, schema, train, heldout)

    # --- the individual expert ------------------------------------------------------------------------------
    def target_epsilon(self) -> float | None:
        """The ε this client asks for; the `over-budget` fault asks for twice its budget."""
        s = self.scenario
        if s.fault_for(self.index) == "over-budget" and np.isfinite(s.budget_for(self.index)):
            return 2.0 * s.budget_for(self.index)
        return s.epsilon_for(self.index)

    def train_and_sign(self, chunk_bytes: int) -> TrainedUpload:
        """Trains on its training rows (as `ClientParty.train` does), signs the artifact and returns the signed upload stream."""
        from client_party.datasets import encode_table
        from client_party.expert_training import TrainConfig, predict_proba, train_expert
        from protocol.artifact import ArtifactVerifier, pack_artifact, write_artifact
        from simulations.flower.upload_stream import upload_messages

        t0 = time.perf_counter()
        d, party = self.data(), self.party()
        eps, seed = self.target_epsilon(), self.scenario.seed + self.index
        cfg = TrainConfig(seed=seed) if eps is None else TrainConfig.private(eps, seed=seed)
        if self.scenario.epochs:
            cfg = replace(cfg, epochs=self.scenario.epochs)
        x, y = encode_table(d.train, d.schema)
        trained = train_expert(x, y, d.schema, cfg)
        xt, yt = encode_table(d.heldout, d.schema)
        acc = float((predict_proba(trained.model, xt).argmax(1) == yt).mean())
        folder = self._artifact_folder(d.table_id)
        write_artifact(folder, trained.model, d.schema, trained.dp, party.key, model_name=folder.name)
        digest = ArtifactVerifier([party.key.public_key()]).verify(folder).digest   # what the provider will name it
        if self.scenario.fault_for(self.index) == "tamper":
            _tamper(folder)
        self._remember({"individual": {"folder": str(folder), "artifact_digest": digest, "dataset_id": d.table_id}})
        messages = upload_messages(party.key, self.client_id, pack_artifact(folder), d.table_id, _artifact_name(d.table_id),
                                   chunk_bytes=chunk_bytes)
        dp = trained.dp
        return TrainedUpload(messages, digest, d.table_id, dp.epsilon if dp.is_private else None, dp.delta, len(d.train), len(d.heldout),
                             acc, time.perf_counter() - t0)

    def _artifact_folder(self, dataset_id: str) -> Path:
        name = f"{self.client_id}-{dataset_id}-{time.strftime('%Y%m%dT%H%M%S')}-{int(time.time() * 1000) % 1000:03d}"
        return self.workspace / "artifacts" / name[:64]

    # --- receipts --------------------------------------------------------------------------------------------
    def accept_receipt(self, envelope_json: str, artifact_digest: str) -> dict[str, Any]:
        """Verifies an upload receipt (signature under the pinned provider key, this client, this artifact, the chain) and keeps it."""
        from protocol.errors import ReceiptError

        store = self.party().store
        _, r = store.add(envelope_json)
        if r.kind != "upload" or r.artifact_digest != artifact_digest:
            raise ReceiptError("BAD_RECEIPT", f"receipt {r.receipt_id!r} is a {r.kind} receipt about {r.artifact_digest}; expected an "
                               f"upload receipt about {artifact_digest}", file=r.receipt_id, rule="receipt matches the upload")
        chain = store.verify()
        return {"receipt-id": r.receipt_id, "sequence": r.sequence, "epsilon": r.epsilon_recomputed, "chain-length": len(chain)}

    # --- evaluation ------------------------------------------------------------------------------------------
    def questions(self) -> list[str]:
        """The held-out records as plain-language questions (as `ClientParty.heldout_questions` words them)."""
        from protocol.verbalizer import Verbalizer

        d = self.data()
        rows = d.heldout.iloc[: self.scenario.max_test]
        return Verbalizer(d.schema, seed=10_000 + self.scenario.seed + self.index).questions(rows[d.schema.feature_names].to_dict("records"))

    def score(self, llamdex: list[int], base: list[int], federated_arrays: dict[str, Any] | None = None,
              federated_llamdex: list[int] | None = None) -> dict[str, Any]:
        """Scores, here, the answers to its own questions: base LLM, its expert alone, Llamdex (labels never leave);
        for a federation's member also the federated expert, alone and asked through Llamdex."""
        from client_party.datasets import encode_table
        from client_party.expert_training import predict_proba

        d = self.data()
        rows = d.heldout.iloc[: self.scenario.max_test]
        x, y = encode_table(rows, d.schema)
        if len(llamdex) != len(y) or len(base) != len(y):
            raise ValueError(f"{len(llamdex)} Llamdex and {len(base)} base answers for {len(y)} questions")
        expert = predict_proba(self._individual_expert(), x).argmax(1)
        out = {"n_questions": int(len(y)), "base_llm": _scores(y, np.asarray(base)), "llamdex": _scores(y, np.asarray(llamdex)),
               "expert": _scores(y, expert), "majority_class": _scores(y, np.full_like(y, np.bincount(y).argmax())),
               # what Llamdex is for: the share of questions it answers as the client's expert does (accuracy alone hides it)
               "llamdex_expert_agreement": float(np.mean(np.asarray(llamdex) == expert))}
        if federated_arrays is not None:
            federated = predict_proba(self._expert_from(federated_arrays, d.schema), x).argmax(1)
            out["federated_expert"] = _scores(y, federated)
            if federated_llamdex is not None:
                if len(federated_llamdex) != len(y):
                    raise ValueError(f"{len(federated_llamdex)} answers of the federated expert through Llamdex for {len(y)} questions")
                out["federated_llamdex"] = _scores(y, np.asarray(federated_llamdex))
                out["federated_llamdex_agreement"] = float(np.mean(np.asarray(federated_llamdex) == federated))
        return out

    def _individual_expert(self) -> Any:
        from protocol.artifact import ArtifactVerifier
        from protocol.expert_spec import load_expert_state

        info = self._state()["individual"]
        verified = ArtifactVerifier([self.party().key.public_key()]).verify(info["folder"])
        return load_expert_state(verified.spec, verified.load_tensors())

    # --- federated (DP-FedAvg) -------------------------------------------------------------------------------
    def fedavg_round(self, arrays: dict[str, np.ndarray], local_epochs: int, lr: float, seed: int) -> tuple[dict[str, np.ndarray], int, float]:
        """Local training from the global model: plain SGD on its training rows (client-level DP is added by the server)."""
        import torch

        from client_party.datasets import encode_table

        d = self.data()
        model = self._expert_from(arrays, d.schema)
        x, y = (torch.from_numpy(a) for a in encode_table(d.train, d.schema))
        model.train()
        opt = torch.optim.SGD(model.parameters(), lr=lr)
        gen, total = torch.Generator().manual_seed(seed), 0.0
        for _ in range(local_epochs):
            perm = torch.randperm(len(x), generator=gen)
            for s in range(0, len(x), 32):
                idx = perm[s:s + 32]
                opt.zero_grad(set_to_none=True)
                loss = torch.nn.functional.cross_entropy(model(x[idx]), y[idx].long())
                loss.backward()
                opt.step()
                total += float(loss) * len(idx)
        out = {k: v.detach().cpu().numpy() for k, v in model.state_dict().items()}
        return out, len(x), total / max(1, local_epochs * len(x))

    def sign_federated(self, arrays: dict[str, np.ndarray], dp_json: str, chunk_bytes: int) -> tuple[list[bytes], str, str]:
        """The federation's lead signs the final global expert with its client-level DP statement and hands it over once."""
        from protocol.artifact import ArtifactVerifier, pack_artifact, write_artifact
        from protocol.dp import DPStatement
        from simulations.flower.upload_stream import upload_messages

        d, party = self.data(), self.party()
        dataset_id = f"{d.table_id}{FEDERATED_SUFFIX}"[:64]
        folder = self._artifact_folder(dataset_id)
        write_artifact(folder, self._expert_from(arrays, d.schema), d.schema, DPStatement.from_dict(json.loads(dp_json)), party.key,
                       model_name=folder.name)
        digest = ArtifactVerifier([party.key.public_key()]).verify(folder).digest
        self._remember({"federated": {"folder": str(folder), "artifact_digest": digest, "dataset_id": dataset_id}})
        return upload_messages(party.key, self.client_id, pack_artifact(folder), dataset_id, _artifact_name(dataset_id),
                               chunk_bytes=chunk_bytes), digest, dataset_id

    @staticmethod
    def _expert_from(arrays: dict[str, np.ndarray], schema: Any) -> Any:
        import torch

        from protocol.expert_spec import load_expert_state

        return load_expert_state(expert_spec_for(schema), {k: torch.from_numpy(np.array(v, dtype=np.float32)) for k, v in arrays.items()})

    # --- state between messages ------------------------------------------------------------------------------
    def _state(self) -> dict[str, Any]:
        p = self.workspace / "simulation.json"
        return json.loads(p.read_text()) if p.is_file() else {}

    def _remember(self, info: dict[str, Any]) -> None:
        p = self.workspace / "simulation.json"
        tmp = p.with_suffix(".tmp")
        tmp.write_text(json.dumps({**self._state(), **info}, indent=2, sort_keys=True) + "\n")
        tmp.replace(p)


def expert_spec_for(schema: Any) -> Any:
    """The expert architecture every client of a schema trains (the default `ExpertSpec`)."""
    from protocol.encoding import FeatureEncoder
    from protocol.expert_spec import ExpertSpec

    return ExpertSpec(input_dim=FeatureEncoder(schema).dim, num_classes=schema.label.num_classes, schema_digest=schema.digest)


def _artifact_name(dataset_id: str) -> str:
    return f"expert-{dataset_id}"[:64]


def _scores(y: np.ndarray, pred: np.ndarray) -> dict[str, float]:
    from sklearn.metrics import accuracy_score, balanced_accuracy_score, f1_score

    return {"accuracy": float(accuracy_score(y, pred)), "balanced_accuracy": float(balanced_accuracy_score(y, pred)),
            "macro_f1": float(f1_score(y, pred, average="macro"))}


def _tamper(folder: Path) -> None:
    """The `tamper` fault: one byte of the signed weights changes after signing (the provider must refuse the artifact)."""
    p = folder / "expert.safetensors"
    data = bytearray(p.read_bytes())
    data[-1] ^= 0x01
    p.write_bytes(bytes(data))


__all__ = ["ClientData", "SimulatedClient", "TrainedUpload", "expert_spec_for"]
