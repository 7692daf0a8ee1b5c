"""Connector sets on disk, keyed by (base model, schema digest): one set serves every client of a schema.

A stored set is served only if it was trained on the question format the current code writes for
its schema (`question_format`); after an upgrade that rewrites a schema's questions, its set is
retrained rather than left to misread them.
"""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

from protocol.schema import PublicSchema
from provider_party.model.base_llm import BaseLLM, llamdex_home
from provider_party.model.connector_training import Preset, TrainedConnectors, train_connectors
from provider_party.model.connectors import load_connectors, read_connector_meta, save_connectors
from provider_party.model.llamdex_model import LlamdexModel
from provider_party.model.question_format import question_format_fingerprint


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._@-]+", "_", name)[:120]


class ConnectorStore:
    def __init__(self, root: str | Path | None = None):
        self.root = Path(root) if root is not None else llamdex_home() / "connectors"
        self._formats: dict[tuple[str, str], str] = {}

    def question_format(self, base: BaseLLM, schema: PublicSchema) -> str:
        """The fingerprint of the questions this code writes for `schema` under `base`'s tokenizer (cached)."""
        key = (base.model_id, schema.digest)   # the store's own key: a model id names its tokenizer
        if key not in self._formats:
            self._formats[key] = question_format_fingerprint(base.tokenizer, schema)
        return self._formats[key]

    def check_writable(self) -> None:
        """Refuses a store that could not take a trained set: found only after minutes of training otherwise.

        The root, or the nearest folder above it that exists, must be a folder this process may write."""
        p = self.root
        while not p.exists() and p != p.parent:
            if p.is_symlink():   # a dangling link: the folder it names is not there
                break
            p = p.parent
        if p.exists() and not p.is_dir():
            raise NotADirectoryError(20, "the connector store (or a folder above it) is a file, not a folder", str(p))
        if p.exists() and not os.access(p, os.W_OK | os.X_OK):
            raise PermissionError(13, "the connector store cannot be written by this user", str(p))

    def model_dir(self, base_model_id: str) -> Path:
        return self.root / _safe(base_model_id)

    def path_for(self, base_model_id: str, schema_digest: str) -> Path:
        return self.model_dir(base_model_id) / schema_digest.replace("sha256:", "")[:32]

    def unusable(self, base: BaseLLM, schema: PublicSchema) -> str | None:
        """Why no stored set can serve `schema` on `base` (None when one can): absent, an older connector
        format, or trained on questions written differently from the ones this code writes."""
        path = self.path_for(base.model_id, schema.digest)
        try:
            meta = read_connector_meta(path)
        except FileNotFoundError:
            return "no connectors stored"
        except (OSError, ValueError) as e:
            return f"the stored set is unreadable or of another version ({e})"
        if meta.get("question_format") != self.question_format(base, schema):
            return ("the stored set was trained on questions written differently from the ones this version writes "
                    "(verbalizer, prompt or tokenizer changed), so it would misread them")
        return None

    def ready_schemas(self, base_model_id: str, base: BaseLLM | None = None) -> list[str]:
        """Digests of the schemas with a stored set for `base_model_id`. With `base` (its tokenizer writes the
        questions) only the sets that can serve are listed, as `unusable` decides; without it every complete set
        is, since the question format cannot be checked. A half-written or unreadable folder is never listed."""
        mdir = self.model_dir(base_model_id)
        if not mdir.is_dir():
            return []
        ready: list[str] = []
        for folder in mdir.iterdir():
            if not (folder / "connectors.json").is_file():
                continue
            try:
                schema = PublicSchema.load(folder / "schema.json")
            except (OSError, ValueError):
                continue
            if folder != self.path_for(base_model_id, schema.digest):   # a save's `.tmp` folder, or a set filed under another schema
                continue
            if base is None or self.unusable(base, schema) is None:
                ready.append(schema.digest)
        return sorted(ready)

    def has(self, base: BaseLLM, schema: PublicSchema) -> bool:
        """A usable set is stored: present, in the current connector format, trained on the current question format."""
        return self.unusable(base, schema) is None

    def load(self, base: BaseLLM, schema: PublicSchema) -> LlamdexModel:
        config, enc, dec, stored_schema = load_connectors(self.path_for(base.model_id, schema.digest))
        return LlamdexModel(base, stored_schema, config, enc, dec)

    def save(self, base: BaseLLM, schema: PublicSchema, trained: TrainedConnectors) -> Path:
        final = self.path_for(base.model_id, schema.digest)
        tmp = final.with_name(final.name + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        trained.config.question_format = self.question_format(base, schema)  # trained in this process, on this code's questions
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
