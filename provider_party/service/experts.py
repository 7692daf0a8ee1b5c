"""The provider's store of verified client experts, kept consistent with the ledger.

    <root>/live/<client>/<digest hex>/     artifact/ (the verified artifact files) + provider.json
    <root>/staging/<client>/<digest hex>/  verified, waiting for its ledger entry
    <root>/tmp/                            unpacked uploads under verification
    <root>/trash/                          being deleted

An expert is **visible** (served by Ask, listed, forgettable) only in `live/`, and it gets there
by one `rename` after its ledger entry committed. `reconcile(ledger)` runs at start: a staged
expert whose upload the ledger recorded is promoted, any other staged or temporary folder is
removed, and a live expert whose last ledger entry is a deletion is removed, so a crash at any
point leaves either the whole expert with its receipt or neither.

`ForgetJournal` (table `forgets` of the provider's state.db) notes, before each deletion entry is
appended to the ledger, what a Forget is about to delete (the expert's schema and base model: the
ledger does not name them). At start the ledger decides: a noted Forget whose deletion entry
committed is finished (the connectors its receipt lists as deleted are removed, unless a live expert
uses them); one whose entry never committed promised nothing and is dropped.
"""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from protocol.artifact import ArtifactVerifier, VerifiedArtifact
from protocol.durable_db import connect_durable
from protocol.receipts import DIGEST_RE

META_FILE = "provider.json"
ARTIFACT_SUBDIR = "artifact"


@dataclass(frozen=True)
class StoredExpert:
    client_id: str
    artifact_digest: str
    dataset_id: str
    schema_digest: str
    artifact_name: str
    receipt_id: str
    uploaded_at: str
    folder: Path

    @property
    def artifact_dir(self) -> Path:
        return self.folder / ARTIFACT_SUBDIR


def _hex(digest: str) -> str:
    """The hex of an artifact digest in its one wire form, `sha256:<64 hex>` (Forget compares that exact string too)."""
    if not isinstance(digest, str) or not DIGEST_RE.fullmatch(digest):
        raise ValueError(f"not a sha256 digest: {digest[:80]!r}")
    return digest[len("sha256:"):]


class ExpertStore:
    def __init__(self, root: str | Path):
        self.root = Path(root)
        for sub in ("live", "staging", "tmp", "trash"):
            (self.root / sub).mkdir(parents=True, exist_ok=True)

    # --- paths -------------------------------------------------------------------------------------
    def live_dir(self, client_id: str, digest: str) -> Path:
        return self.root / "live" / client_id / _hex(digest)

    def staging_dir(self, client_id: str, digest: str) -> Path:
        return self.root / "staging" / client_id / _hex(digest)

    def new_tmp_dir(self) -> Path:
        return self.root / "tmp" / uuid.uuid4().hex  # created by unpack_artifact

    # --- life cycle ----------------------------------------------------------------------------------
    def stage(self, client_id: str, verified: VerifiedArtifact, meta: dict[str, Any]) -> Path:
        """Moves a verified tmp folder to staging (not visible) as <staging>/artifact, with provider.json beside it."""
        dest = self.staging_dir(client_id, verified.digest)
        if dest.exists():
            self._trash(dest)
        dest.mkdir(parents=True)
        os.replace(Path(verified.folder), dest / ARTIFACT_SUBDIR)
        (dest / META_FILE).write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")
        return dest

    def promote(self, client_id: str, digest: str) -> Path:
        src, dest = self.staging_dir(client_id, digest), self.live_dir(client_id, digest)
        dest.parent.mkdir(parents=True, exist_ok=True)
        if dest.exists():  # an older copy of the same bytes (re-upload after a Forget crash)
            self._trash(dest)
        os.replace(src, dest)
        _fsync_dir(dest.parent)
        return dest

    def discard_staged(self, client_id: str, digest: str) -> None:
        p = self.staging_dir(client_id, digest)
        if p.exists():
            self._trash(p)

    def remove(self, client_id: str, digest: str) -> bool:
        p = self.live_dir(client_id, digest)
        if not p.exists():
            return False
        self._trash(p)
        return True

    def _trash(self, p: Path) -> None:
        t = self.root / "trash" / uuid.uuid4().hex
        os.replace(p, t)  # invisible at once; the bytes go next
        shutil.rmtree(t, ignore_errors=True)

    # --- reads ---------------------------------------------------------------------------------------
    def _read(self, client_id: str, folder: Path) -> StoredExpert | None:
        try:
            m = json.loads((folder / META_FILE).read_text())
        except (OSError, ValueError):
            return None
        return StoredExpert(client_id, m["artifact_digest"], m["dataset_id"], m["schema_digest"], m.get("artifact_name", "expert"),
                            m.get("receipt_id", ""), m.get("uploaded_at", ""), folder)

    def staged(self, client_id: str, digest: str) -> StoredExpert | None:
        """The staged (verified, not yet visible) copy, if one is there: an upload whose making-visible failed after
        its charge is found here on retry rather than charged again."""
        try:
            p = self.staging_dir(client_id, digest)
        except ValueError:
            return None
        return self._read(client_id, p) if p.is_dir() else None

    def live(self, client_id: str | None = None) -> list[StoredExpert]:
        """Visible experts (of one client, or all), oldest first."""
        return self._listed("live", client_id)

    def staged_of(self, client_id: str) -> list[StoredExpert]:
        """`client_id`'s staged copies: verified, not visible; charged ones are those whose making-visible failed."""
        return self._listed("staging", client_id)

    def _listed(self, area: str, client_id: str | None) -> list[StoredExpert]:
        base = self.root / area
        clients = [client_id] if client_id else sorted(p.name for p in base.iterdir() if p.is_dir())
        out = []
        for c in clients:
            d = base / c
            if not d.is_dir():
                continue
            for f in d.iterdir():
                e = self._read(c, f)
                if e is not None:
                    out.append(e)
        return sorted(out, key=lambda e: (e.uploaded_at, e.artifact_digest))

    def get(self, client_id: str, digest: str) -> StoredExpert | None:
        try:
            p = self.live_dir(client_id, digest)
        except ValueError:
            return None
        return self._read(client_id, p) if p.is_dir() else None

    def verify(self, expert: StoredExpert, client_public_key: Any) -> VerifiedArtifact:
        """Re-verifies a stored artifact (it was verified at upload; the disk is checked again before loading)."""
        return ArtifactVerifier([client_public_key]).verify(expert.artifact_dir)

    # --- crash recovery --------------------------------------------------------------------------------
    def reconcile(self, last_kind: Callable[[str, str], str | None]) -> dict[str, int]:
        """`last_kind(client_id, digest)` -> "upload" | "deletion" | None from the ledger. Returns counts."""
        counts = {"promoted": 0, "discarded": 0, "removed": 0}
        for sub in ("tmp", "trash"):
            for p in (self.root / sub).iterdir():
                shutil.rmtree(p, ignore_errors=True) if p.is_dir() else p.unlink(missing_ok=True)
        for cdir in sorted((self.root / "staging").iterdir()):
            for p in sorted(cdir.iterdir()) if cdir.is_dir() else ():
                digest = "sha256:" + p.name
                if last_kind(cdir.name, digest) == "upload" and not (self.root / "live" / cdir.name / p.name).exists():
                    self.promote(cdir.name, digest)
                    counts["promoted"] += 1
                else:
                    self._trash(p)
                    counts["discarded"] += 1
        for cdir in sorted((self.root / "live").iterdir()):
            for p in sorted(cdir.iterdir()) if cdir.is_dir() else ():
                if last_kind(cdir.name, "sha256:" + p.name) != "upload":
                    self._trash(p)
                    counts["removed"] += 1
        return counts


class ForgetJournal:
    """Forgets under way: (client, artifact digest) -> schema digest and base model of its connectors."""

    def __init__(self, db_path: str | Path):
        self.db_path = Path(db_path)
        con = self._connect()
        try:
            con.execute("CREATE TABLE IF NOT EXISTS forgets (client_id TEXT NOT NULL, artifact_digest TEXT NOT NULL, schema_digest TEXT NOT NULL, "
                        "base_model_id TEXT NOT NULL, created_at REAL NOT NULL, PRIMARY KEY (client_id, artifact_digest))")
        finally:
            con.close()

    def _connect(self) -> sqlite3.Connection:
        return connect_durable(self.db_path)

    def note(self, client_id: str, artifact_digest: str, schema_digest: str, base_model_id: str) -> None:
        con = self._connect()
        try:
            con.execute("INSERT OR REPLACE INTO forgets VALUES (?,?,?,?,?)", (client_id, artifact_digest, schema_digest, base_model_id, time.time()))
        finally:
            con.close()

    def done(self, client_id: str, artifact_digest: str) -> None:
        con = self._connect()
        try:
            con.execute("DELETE FROM forgets WHERE client_id=? AND artifact_digest=?", (client_id, artifact_digest))
        finally:
            con.close()

    def pending(self) -> list[dict[str, Any]]:
        con = self._connect()
        try:
            return [dict(r) for r in con.execute("SELECT * FROM forgets ORDER BY created_at")]
        finally:
            con.close()


def _fsync_dir(p: Path) -> None:
    try:
        fd = os.open(p, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
