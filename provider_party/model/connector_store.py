"""Connector sets on disk, keyed by (base model, schema digest): one set serves every client of a schema."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

from protocol.schema import PublicSchema
from provider_party.model.base_llm import BaseLLM, llamdex_home
from provider_party.model.connector_training import Preset, TrainedConnectors, train_connectors
from provider_party.model.connectors import load_connectors, read_connector_meta, save_connectors
from provider_party.model.llamdex_model import LlamdexModel


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._@-]+", "_", name)[:120]


class ConnectorStore:
    def __init__(self, root: str | Path | None = None):
        self.root = Path(root) if root is not None else llamdex_home() / "connectors"

    def model_dir(self, base_model_id: str) -> Path:
        return self.root / _safe(base_model_id)

    def path_for(self, base_model_id: str, schema_digest: str) -> Path:
        return self.model_dir(base_model_id) / schema_digest.replace("sha256:", "")[:32]

    def has(self, base: BaseLLM, schema: PublicSchema) -> bool:
        """A usable set is stored: present and in the current connector format (older sets are retrained)."""
        try:
            read_connector_meta(self.path_for(base.model_id, schema.digest))
        except (OSError, ValueError):
            return False
        return True

    def load(self, base: BaseLLM, schema: PublicSchema) -> LlamdexModel:
        config, enc, dec, stored_schema = load_connectors(self.path_for(base.model_id, schema.digest))
        return LlamdexModel(base, stored_schema, config, enc, dec)

    def save(self, base: BaseLLM, schema: PublicSchema, trained: TrainedConnectors) -> Path:
        final = self.path_for(base.model_id, schema.digest)
        tmp = final.with_name(final.name + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        save_connectors(tmp, trained.config, trained.encoder, trained.decoder, schema)
        if final.exists():
            shutil.rmtree(final)
        tmp.rename(final)  # a reader never sees a half-written set
        return final

    def get_or_train(self, base: BaseLLM, schema: PublicSchema, preset: Preset | str = "default", seed: int = 0,
                     progress: bool = True, retrain: bool = False, on_progress=None) -> tuple[LlamdexModel, bool]:
        """Returns (model, trained_now). Reuses stored connectors for the same base model and schema."""
        if self.has(base, schema) and not retrain:
            return self.load(base, schema), False
        trained = train_connectors(base, schema, preset, seed=seed, progress=progress, on_progress=on_progress)
        self.save(base, schema, trained)
        return LlamdexModel(base, schema, trained.config, trained.encoder, trained.decoder), True

    def delete(self, base_model_id: str, schema_digest: str) -> bool:
        p = self.path_for(base_model_id, schema_digest)
        if p.exists():
            shutil.rmtree(p)
            return True
        return False
