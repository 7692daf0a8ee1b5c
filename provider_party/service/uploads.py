"""Chunked, resumable expert uploads and their verification, up to the signed receipt.

An upload is named by the client's `upload_id`. Its bytes go to `<root>/parts/<client>/<id>.part`
(appended in order; the file's length *is* the number of bytes received, so a killed provider
resumes exactly where the disk stopped); its header (dataset, size, SHA-256) sits in SQLite. When
all bytes are there, `finalize` checks, in this order, before any tensor is loaded:

  1. the whole tar's digest (BLAKE3 or SHA-256, as the signed header chose) against the header
     (ARTIFACT_SHA256_MISMATCH),
  2. the tar layout: regular files with plain, allowed names only, each within its limit
     (protocol.artifact.unpack_artifact: PATH_TRAVERSAL, FORBIDDEN_FILE (pickle...), SYMLINK, ...),
  3. the artifact signature by the client's registered key, then every file digest and size,
     the spec, the schema, their consistency, the safetensors header, the DP statement
     (protocol.artifact.ArtifactVerifier),
  4. ε recomputed from the DP parameters with the provider's own accountant (DP_MISMATCH),
  5. the dataset's budget under basic composition, charged atomically with the signed receipt
     (provider_party.service.ledger: BUDGET_EXCEEDED),
and only then makes the expert visible (provider_party.service.experts). A refusal changes no ledger row,
no budget and no stored expert.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import queue
import re
import shutil
import sqlite3
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from protocol.artifact import ArtifactVerifier, unpack_artifact
from protocol.crashpoints import crashpoint
from protocol.dp import verify_statement
from protocol.durable_db import connect_durable, durable_connection, init_schema
from protocol.errors import BudgetError, CodedError
from protocol.receipts import utc_now_rfc3339
from protocol.rpc_errors import RpcError
from protocol.wire import UPLOAD_DIGESTS, check_wire_name, upload_digest_hex
from provider_party.service.config import ProviderLimits, RegisteredClient
from provider_party.service.experts import ExpertStore
from provider_party.service.ledger import Ledger, LedgerEntry

log = logging.getLogger(__name__)
UPLOAD_ID_RE = re.compile(r"^[A-Za-z0-9_-]{16,64}$")
HEX64_RE = re.compile(r"^[0-9a-f]{64}$")
READ_BLOCK = 8 << 20

_SCHEMA = """
CREATE TABLE IF NOT EXISTS uploads (
    upload_id       TEXT PRIMARY KEY,
    client_id       TEXT NOT NULL,
    dataset_id      TEXT NOT NULL,
    artifact_name   TEXT NOT NULL,
    total_bytes     INTEGER NOT NULL,
    artifact_sha256 TEXT NOT NULL,
    state           TEXT NOT NULL CHECK (state IN ('receiving', 'complete', 'failed')),
    created_at      REAL NOT NULL,
    updated_at      REAL NOT NULL,
    artifact_digest TEXT,
    receipt         TEXT,
    error           TEXT,
    artifact_blake3 TEXT
);
CREATE INDEX IF NOT EXISTS uploads_by_client ON uploads (client_id, state);
"""


@dataclass
class UploadRecord:
    upload_id: str
    client_id: str
    dataset_id: str
    artifact_name: str
    total_bytes: int
    artifact_sha256: str
    state: str
    created_at: float
    updated_at: float
    artifact_digest: str | None = None
    receipt: str | None = None
    error: str | None = None
    artifact_blake3: str | None = None   # set when the header named the tar by BLAKE3 (artifact_sha256 is then "")

    @property
    def tar_digest(self) -> tuple[str, str]:
        """(algorithm, hex) of the whole tar as the signed header declared it."""
        return ("blake3", self.artifact_blake3) if self.artifact_blake3 else ("sha256", self.artifact_sha256)


@dataclass
class FinalizedUpload:
    record: UploadRecord
    entry: LedgerEntry
    verify_seconds: float
    checks: list[str] = field(default_factory=list)
    verify_cpu_seconds: float = 0.0   # CPU of the finalizing thread: tells hashing and parsing from waits on the disk


class UploadSession:
    """One stream's hold on an upload: checks and appends chunks at the right offset, releases the upload on close.

    `write` checks a chunk's place and size, then its digest (BLAKE3 or SHA-256), and only then appends
    it, so the file only ever holds verified bytes, in order: its length is the number of good bytes
    received. It runs on the stream's thread: gRPC keeps receiving into its flow-control window meanwhile
    (hashing and writing release the GIL); a writer thread fed through a queue cost 10-20 ms more CPU
    per 100 MB in hand-offs, measured in isolation here, than it overlapped. `close` fsyncs the file
    when the upload is unfinished (a resume will need those bytes); a complete upload goes straight to
    `finalize`, which verifies the whole tar and deletes the file."""

    def __init__(self, manager: "UploadManager", record: UploadRecord, path: Path):
        self.manager, self.record, self.path = manager, record, path
        self._f = open(path, "ab", buffering=0)  # unbuffered: the file length is what arrived
        self.received = self._f.tell()     # bytes verified and written

    def _check_place(self, offset: int, data: Any, max_chunk: int) -> None:
        total = self.record.total_bytes
        if offset != self.received:
            raise RpcError("OFFSET_MISMATCH", f"chunk offset {offset} but {self.received} bytes of upload {self.record.upload_id!r} are "
                           f"stored; send from offset {self.received}", rule="contiguous chunks")
        if not data:
            raise RpcError("BAD_REQUEST", f"empty chunk at offset {offset}", rule="non-empty chunks")
        if len(data) > max_chunk:
            raise RpcError("CHUNK_TOO_LARGE", f"chunk of {len(data)} bytes; the limit is {max_chunk}", rule="max_chunk_bytes")
        if offset + len(data) > total:
            raise RpcError("PAST_END", f"chunk [{offset}, {offset + len(data)}) goes past the declared size {total}", rule="total_bytes")

    @staticmethod
    def check_digest_name(alg: str, digest_hex: str) -> None:
        if alg not in UPLOAD_DIGESTS:
            raise RpcError("BAD_REQUEST", f"chunk digest {alg!r} is not supported; use one of {list(UPLOAD_DIGESTS)} (Hello: upload_digests)",
                           rule="chunk digest")
        if not HEX64_RE.fullmatch(digest_hex or ""):
            raise RpcError("BAD_REQUEST", f"the chunk's {alg} must be 64 lowercase hex digits", rule="chunk digest")

    def write(self, offset: int, data: Any, digest_hex: str, max_chunk: int, alg: str = "sha256") -> None:
        """Checks one chunk (`digest_hex`: hex `alg` digest of `data`) and appends it; a bad chunk is dropped.
        A chunk the disk cannot hold is dropped too (the file is cut back to the good bytes): DISK_FULL."""
        self._check_place(offset, data, max_chunk)
        self.check_digest_name(alg, digest_hex)
        got = upload_digest_hex(alg, data)
        if got != digest_hex:
            raise RpcError("CHUNK_DIGEST_MISMATCH", f"chunk at offset {offset}: {alg} {got[:16]}… != declared {digest_hex[:16]}…; "
                           f"the chunk was dropped, resend from offset {offset}", rule=f"chunk {alg}")
        view, done = memoryview(data), 0
        try:
            while done < len(view):   # a raw write may store part of the chunk and refuse the rest (ENOSPC)
                done += self._f.write(view[done:]) or 0
        except OSError as e:
            self._f.truncate(self.received)   # the file holds only whole, verified chunks
            if e.errno in (errno.ENOSPC, errno.EDQUOT):
                raise disk_full(f"chunk at offset {offset} of upload {self.record.upload_id!r} was not stored; {self.received} bytes are; "
                                f"resume from offset {self.received} later") from None
            raise
        self.received += len(data)
        crashpoint("upload.chunk_written")

    def close(self) -> None:
        try:
            if self.received < self.record.total_bytes:
                os.fsync(self._f.fileno())  # an unfinished upload: a resume after a power loss needs these bytes
            self._f.close()
        finally:
            self.manager._release(self.record.upload_id)


class ReadAhead:
    """The rest of an upload stream: received on a helper thread while the provider is busy with the
    header, then on the consumer's own thread.

    The provider creates it right after the header's cheap checks, so the chunks that follow are
    received (at most `max_messages` of them; then gRPC flow control holds the sender back) while the
    header's signature, its nonce and the upload row are committed (two fsyncs). Nothing received is
    used before that succeeded; a refused header drops it (`stop`). The consumer's first `next` hands
    over: it gets what the helper received, in order, and from then on receives directly (no thread
    hand-off per chunk). Iteration ends as the stream did: StopIteration, or the `grpc.RpcError` of a
    client that went away."""

    _END, _HANDOVER = object(), object()

    def __init__(self, messages: Any, max_messages: int):
        self._messages = messages
        self._queue: "queue.Queue[Any]" = queue.Queue(maxsize=max(1, max_messages))
        self._handover = threading.Event()
        self._stop = threading.Event()
        self._direct = self._ended = False
        self._thread = threading.Thread(target=self._run, name="llamdex-upload-reader", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            while not self._handover.is_set() and not self._stop.is_set():
                if not self._put(next(self._messages)):
                    return
            last: Any = self._HANDOVER
        except StopIteration:
            last = self._END
        except BaseException as e:  # noqa: BLE001 - handed to the consumer (grpc.RpcError: the client went away)
            last = e
        self._put(last)

    def _put(self, item: Any) -> bool:
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=0.2)
                return True
            except queue.Full:
                pass
        return False

    def __iter__(self) -> "ReadAhead":
        return self

    def __next__(self) -> Any:
        if self._direct:
            return next(self._messages)
        if self._ended:
            raise StopIteration
        self._handover.set()
        item = self._queue.get()
        if item is self._HANDOVER:   # the helper stopped receiving: the stream is ours
            self._direct = True
            return next(self._messages)
        if item is self._END:
            self._ended = True
            raise StopIteration
        if isinstance(item, BaseException):
            self._ended = True
            raise item
        return item

    def stop(self) -> None:
        """Stops the helper (it ends with the call at the latest) and drops what was not consumed."""
        self._stop.set()
        while True:
            try:
                self._queue.get_nowait()
            except queue.Empty:
                return


class UploadManager:
    def __init__(self, root: str | Path, db_path: str | Path, limits: ProviderLimits,
                 ledger_receipt_for: Callable[[str, str], tuple[str, dict] | None]):
        self.root = Path(root)
        # (client, upload_id) -> (artifact digest, receipt) when the ledger charged that upload: an unfinished
        # row it names is completed, never expired (at start and at runtime)
        self._ledger_receipt_for = ledger_receipt_for
        self.parts = self.root / "parts"
        self.parts.mkdir(parents=True, exist_ok=True)
        self.db_path = Path(db_path)
        self.limits = limits
        self._busy: dict[str, str] = {}      # upload_id -> client_id, while a stream or a finalize holds it
        self._streams: dict[str, int] = {}   # client_id -> open UploadExpert streams
        self._lock = threading.Lock()
        init_schema(self.db_path, _SCHEMA)
        with durable_connection(self.db_path) as con:
            cols = {r["name"] for r in con.execute("PRAGMA table_info(uploads)")}
            if "artifact_blake3" not in cols:  # a state.db from before BLAKE3 uploads
                con.execute("ALTER TABLE uploads ADD COLUMN artifact_blake3 TEXT")

    def _connect(self) -> sqlite3.Connection:
        return connect_durable(self.db_path)

    def _exec(self, sql: str, args: tuple = ()) -> list[sqlite3.Row]:
        """One statement on state.db; a disk too full for SQLite to work is DISK_FULL, not an internal error."""
        try:
            con = self._connect()
            try:
                return con.execute(sql, args).fetchall()
            finally:
                con.close()
        except sqlite3.OperationalError as e:
            if _is_disk_full(e):
                raise disk_full(f"the upload records cannot be read or written ({e}); retry when the operator has freed space") from None
            raise

    def part_path(self, client_id: str, upload_id: str) -> Path:
        return self.parts / client_id / f"{upload_id}.part"

    def get(self, upload_id: str, client_id: str) -> UploadRecord:
        rows = self._exec("SELECT * FROM uploads WHERE upload_id=?", (upload_id,))
        if not rows or rows[0]["client_id"] != client_id:  # another client's upload is not found, not forbidden
            raise RpcError("UPLOAD_NOT_FOUND", f"no upload {upload_id!r} for client {client_id!r}", rule="own uploads")
        return UploadRecord(**dict(rows[0]))

    def status(self, upload_id: str, client_id: str) -> UploadRecord:
        """The record GetUploadStatus reports. One past its TTL is settled first, so the answer says `failed`
        (or `complete`, if the ledger charged it) as soon as that is true, rather than `receiving` until its
        client next opens an upload."""
        rec = self.get(upload_id, client_id)
        if rec.state == "receiving" and time.time() - rec.updated_at > self.limits.upload_ttl_s:
            with self._lock:
                if upload_id not in self._busy:
                    self._settle(self.get(upload_id, client_id), time.time())
            rec = self.get(upload_id, client_id)
        return rec

    def received_bytes(self, rec: UploadRecord) -> int:
        p = self.part_path(rec.client_id, rec.upload_id)
        if rec.state == "complete":
            return rec.total_bytes
        return p.stat().st_size if p.exists() else 0

    # --- opening a stream ------------------------------------------------------------------------------
    def validate_header(self, h: Any) -> None:
        if not UPLOAD_ID_RE.fullmatch(h.upload_id or ""):
            raise RpcError("BAD_REQUEST", f"upload_id {h.upload_id!r} must be 16..64 of [A-Za-z0-9_-]", rule="upload_id")
        for name in ("dataset_id", "artifact_name"):
            check_wire_name(getattr(h, name), name)
        sha, b3 = h.artifact_sha256 or "", getattr(h, "artifact_blake3", "") or ""
        if bool(sha) == bool(b3):
            raise RpcError("BAD_REQUEST", "the header must carry exactly one of artifact_sha256 and artifact_blake3 (the whole tar's digest)",
                           rule="tar digest")
        if b3 and "blake3" not in UPLOAD_DIGESTS:
            raise RpcError("BAD_REQUEST", "this provider does not support BLAKE3; send artifact_sha256", rule="tar digest")
        if not HEX64_RE.fullmatch(sha or b3):
            name = "artifact_sha256" if sha else "artifact_blake3"
            raise RpcError("BAD_REQUEST", f"{name} must be 64 lowercase hex digits (the digest of the whole tar)", rule=name)
        if h.total_bytes <= 0:
            raise RpcError("BAD_REQUEST", f"total_bytes must be positive, got {h.total_bytes}", rule="total_bytes")
        if h.total_bytes > self.limits.max_artifact_bytes:
            raise RpcError("ARTIFACT_TOO_LARGE", f"artifact of {h.total_bytes} bytes exceeds the provider's limit of "
                           f"{self.limits.max_artifact_bytes} bytes (Hello reports the limits)", rule="max_artifact_bytes")
        if h.resume_offset < 0 or h.resume_offset > h.total_bytes:
            raise RpcError("BAD_REQUEST", f"resume_offset {h.resume_offset} outside [0, {h.total_bytes}]", rule="resume_offset")

    def open(self, client: RegisteredClient, h: Any) -> UploadSession | UploadRecord:
        """A session for appending, or the finished record (complete: idempotent; failed: refused)."""
        cid = client.client_id
        with self._lock:
            if h.upload_id in self._busy:
                raise RpcError("UPLOAD_BUSY", f"upload {h.upload_id!r} is being written by another stream; wait for it or cancel it",
                               rule="one stream per upload")
            if sum(self._streams.values()) >= self.limits.max_upload_streams:
                raise RpcError("TOO_MANY_UPLOADS", f"the provider is receiving {sum(self._streams.values())} uploads, its limit "
                               f"(max_upload_streams); retry in a moment (nothing of this upload was stored)", rule="max_upload_streams")
            if self._streams.get(cid, 0) >= self.limits.max_upload_streams_per_client:
                raise RpcError("TOO_MANY_UPLOADS", f"client {cid!r} already has {self._streams[cid]} upload streams open; the limit is "
                               f"{self.limits.max_upload_streams_per_client} (max_upload_streams_per_client): finish one first",
                               rule="max_upload_streams_per_client")
            self._settle_idle(cid)   # before the lookups: an expired upload neither resumes nor takes a place
            rows = self._exec("SELECT * FROM uploads WHERE upload_id=?", (h.upload_id,))
            now = time.time()
            if rows:
                rec = UploadRecord(**dict(rows[0]))
                if rec.client_id != cid:
                    raise RpcError("UPLOAD_MISMATCH", f"upload_id {h.upload_id!r} is taken; choose a fresh random id", rule="unique upload_id")
                b3 = getattr(h, "artifact_blake3", "") or None
                if (rec.dataset_id, rec.artifact_name, rec.total_bytes, rec.artifact_sha256, rec.artifact_blake3 or None) != \
                        (h.dataset_id, h.artifact_name, h.total_bytes, h.artifact_sha256, b3):
                    raise RpcError("UPLOAD_MISMATCH", f"upload {h.upload_id!r} was started for another artifact (dataset, name, size or "
                                   "SHA-256 differ); start a new upload_id", rule="same artifact on resume")
                if rec.state == "complete":
                    return rec
                if rec.state == "failed":
                    raise RpcError("UPLOAD_FAILED", f"upload {h.upload_id!r} failed: {rec.error}; start a new upload_id", rule="failed uploads end")
            else:
                if h.resume_offset != 0:
                    raise RpcError("UPLOAD_NOT_FOUND", f"no upload {h.upload_id!r} to resume (it may have expired); start from offset 0",
                                   rule="resume an existing upload")
                open_count = self._exec("SELECT COUNT(*) AS n FROM uploads WHERE client_id=? AND state='receiving'", (cid,))[0]["n"]
                if open_count >= self.limits.max_open_uploads:
                    raise RpcError("TOO_MANY_UPLOADS", f"client {cid!r} has {open_count} unfinished uploads; the limit is "
                                   f"{self.limits.max_open_uploads}: resume one (GetUploadStatus lists where each stopped), or wait until one has had "
                                   f"no byte for {self.limits.upload_ttl_s} s (upload_ttl_s) and expires", rule="max_open_uploads")
                b3 = getattr(h, "artifact_blake3", "") or None
                self._exec("INSERT INTO uploads (upload_id, client_id, dataset_id, artifact_name, total_bytes, artifact_sha256, artifact_blake3, "
                           "state, created_at, updated_at) VALUES (?,?,?,?,?,?,?,'receiving',?,?)",
                           (h.upload_id, cid, h.dataset_id, h.artifact_name, h.total_bytes, h.artifact_sha256, b3, now, now))
                rec = UploadRecord(h.upload_id, cid, h.dataset_id, h.artifact_name, h.total_bytes, h.artifact_sha256, "receiving", now, now,
                                   artifact_blake3=b3)
            path = self.part_path(cid, h.upload_id)
            path.parent.mkdir(parents=True, exist_ok=True)
            received = path.stat().st_size if path.exists() else 0
            if h.resume_offset != received:
                raise RpcError("OFFSET_MISMATCH", f"resume_offset {h.resume_offset} but {received} bytes of upload {h.upload_id!r} are "
                               f"stored; resume from {received} (GetUploadStatus tells)", rule="resume where the provider stopped")
            self._busy[h.upload_id] = cid
            self._streams[cid] = self._streams.get(cid, 0) + 1
        try:
            return UploadSession(self, rec, path)
        except BaseException:
            self._release(h.upload_id)
            self.end_stream(cid)
            raise

    def _release(self, upload_id: str) -> None:
        with self._lock:
            self._busy.pop(upload_id, None)

    def end_stream(self, client_id: str) -> None:
        """Gives back the stream place `open` took. The caller does so after the upload's finalize, not when
        its bytes are in: a stream holds a server thread until its answer, also while its verification waits
        for Ask passes (`InteractiveFirst`), so only then may another stream start (`max_upload_streams`)."""
        with self._lock:
            if self._streams.get(client_id, 0) > 0:
                self._streams[client_id] -= 1
                if not self._streams[client_id]:
                    del self._streams[client_id]

    def _release_finalize(self, upload_id: str) -> None:
        with self._lock:
            self._busy.pop(upload_id, None)

    # --- finishing ---------------------------------------------------------------------------------------
    def _fail(self, rec: UploadRecord, err: CodedError) -> None:
        self._exec("UPDATE uploads SET state='failed', error=?, updated_at=? WHERE upload_id=?", (str(err)[:2000], time.time(), rec.upload_id))
        self.part_path(rec.client_id, rec.upload_id).unlink(missing_ok=True)

    def finalize(self, rec: UploadRecord, client: RegisteredClient, ledger: Ledger, experts: ExpertStore, ledger_lock: threading.Lock) -> FinalizedUpload:
        with self._lock:
            if rec.upload_id in self._busy:
                raise RpcError("UPLOAD_BUSY", f"upload {rec.upload_id!r} is being written by another stream", rule="one stream per upload")
            self._busy[rec.upload_id] = ""
        try:
            try:
                return self._finalize(rec, client, ledger, experts, ledger_lock)
            except (OSError, sqlite3.OperationalError) as e:
                if not _is_disk_full(e):
                    raise
                raise disk_full(f"upload {rec.upload_id!r} is complete but could not be verified and stored ({e}); send the same upload "
                                "again (same upload_id) later: it is charged once, whichever step the disk stopped") from None
        except CodedError as e:
            if not isinstance(e, RpcError) or e.code not in ("UPLOAD_BUSY", "DISK_FULL"):
                self._fail(rec, e)
            raise
        finally:
            self._release_finalize(rec.upload_id)

    def _finalize(self, rec: UploadRecord, client: RegisteredClient, ledger: Ledger, experts: ExpertStore, ledger_lock: threading.Lock) -> FinalizedUpload:
        t0, c0 = time.perf_counter(), time.thread_time()
        crashpoint("upload.finalize")
        checks: list[str] = []
        path = self.part_path(rec.client_id, rec.upload_id)
        with open(path, "rb") as f:
            data = f.read(rec.total_bytes + 1)
        alg, want = rec.tar_digest
        if len(data) != rec.total_bytes or upload_digest_hex(alg, data) != want:
            raise RpcError("ARTIFACT_SHA256_MISMATCH", f"the {len(data)} bytes received do not hash to the signed artifact_{alg} "
                           f"{want[:16]}…; upload again with a new upload_id", rule=f"artifact {alg}")
        checks.append(f"{alg} of the tar")
        tmp = experts.new_tmp_dir()
        try:
            unpack_artifact(data, tmp, max_bytes=self.limits.max_artifact_bytes)
            checks.append("tar layout (plain names, allowed files, no links, sizes)")
            verified = ArtifactVerifier([client.public_key]).verify(tmp, name=f"artifact {rec.artifact_name}")
            checks += ["signature (client's registered key)", "file digests and sizes", "expert spec", "public schema",
                       "spec/schema/tensor-header consistency", "dp statement"]
            try:
                eps = verify_statement(verified.dp)
            except BudgetError as e:
                raise RpcError("DP_MISMATCH", f"dp.json: {e}", file="dp.json", rule="epsilon recomputed by the provider") from None
            checks.append("epsilon recomputed")
            with ledger_lock:
                live = experts.get(client.client_id, verified.digest)
                if live is not None:
                    charged = charged_by_this_upload(ledger, live, rec.upload_id)
                    if charged is not None:   # charged by this very upload before (its answer was lost): the same receipt
                        return self._complete(rec, charged, verified.digest, path, t0, c0, checks + ["already charged by this upload_id"])
                    raise RpcError("ARTIFACT_EXISTS", f"expert {verified.digest} is already stored for {client.client_id!r}; nothing was charged",
                                   rule="one copy per artifact")
                staged = experts.staged(client.client_id, verified.digest)
                charged = charged_by_this_upload(ledger, staged, rec.upload_id, same_receipt=True) if staged is not None else None
                if charged is not None:   # charged, then making it visible failed with an error the process survived: no second charge
                    experts.promote(client.client_id, verified.digest)
                    return self._complete(rec, charged, verified.digest, path, t0, c0,
                                          checks + ["already charged by this upload_id (made visible now)"])
                if ledger.budget(client.client_id, rec.dataset_id) is None:
                    e_b, d_b = client.budget_for(rec.dataset_id)
                    ledger.set_budget(client.client_id, rec.dataset_id, e_b, d_b)
                receipt_id = uuid.uuid4().hex   # known before the charge: nothing is written after the ledger commits but a rename
                meta = {"artifact_digest": verified.digest, "dataset_id": rec.dataset_id, "schema_digest": verified.schema.digest,
                        "artifact_name": rec.artifact_name, "upload_id": rec.upload_id, "uploaded_at": utc_now_rfc3339(),
                        "signer": verified.signer_fingerprint, "receipt_id": receipt_id}
                experts.stage(client.client_id, verified, meta)
                crashpoint("upload.staged")
                try:
                    entry = ledger.append_upload(client.client_id, rec.dataset_id, verified.digest, verified.dp, eps,
                                                 artifact_name=rec.artifact_name, client_key=verified.signer_fingerprint, receipt_id=receipt_id)
                except BudgetError as e:
                    experts.discard_staged(client.client_id, verified.digest)
                    raise RpcError("BUDGET_EXCEEDED", str(e), rule="dataset privacy budget (basic composition)") from None
                except BaseException:
                    experts.discard_staged(client.client_id, verified.digest)
                    raise
                checks.append("budget charged, receipt signed")
                crashpoint("upload.charged")
                experts.promote(client.client_id, verified.digest)
                crashpoint("upload.promoted")
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)
        return self._complete(rec, entry, verified.digest, path, t0, c0, checks)

    def _complete(self, rec: UploadRecord, entry: LedgerEntry, digest: str, path: Path, t0: float, c0: float, checks: list[str]) -> FinalizedUpload:
        receipt_json = json.dumps(entry.receipt, sort_keys=True, separators=(",", ":"))
        self._exec("UPDATE uploads SET state='complete', artifact_digest=?, receipt=?, updated_at=? WHERE upload_id=?",
                   (digest, receipt_json, time.time(), rec.upload_id))
        path.unlink(missing_ok=True)
        rec.state, rec.artifact_digest, rec.receipt = "complete", digest, receipt_json
        return FinalizedUpload(rec, entry, time.perf_counter() - t0, checks, time.thread_time() - c0)

    # --- recovery ---------------------------------------------------------------------------------------
    def recover(self) -> dict[str, int]:
        """At start: an upload whose ledger entry committed but whose row did not is completed from the
        ledger; unfinished uploads past their TTL are discarded with their bytes."""
        counts = {"completed": 0, "expired": 0}
        now = time.time()
        for r in self._exec("SELECT * FROM uploads WHERE state='receiving'"):
            outcome = self._settle(UploadRecord(**dict(r)), now)
            if outcome:
                counts[outcome] += 1
        return counts

    def _settle_idle(self, client_id: str) -> None:
        """At runtime, under the lock: `client_id`'s unfinished uploads with no byte for `upload_ttl_s` are
        settled as at start. Without this a long-running provider would never expire them, and a client
        whose links dropped `max_open_uploads` times would be refused every new upload until a restart.
        An upload a stream or a finalize holds is left alone, whatever its age."""
        now = time.time()
        stale = self._exec("SELECT * FROM uploads WHERE client_id=? AND state='receiving' AND updated_at<?",
                           (client_id, now - self.limits.upload_ttl_s))
        for r in stale:
            if r["upload_id"] not in self._busy:
                outcome = self._settle(UploadRecord(**dict(r)), now)
                if outcome:
                    log.info("upload %s of %s: %s (no byte for %s s)", r["upload_id"], client_id, outcome, self.limits.upload_ttl_s)

    def _settle(self, rec: UploadRecord, now: float) -> str | None:
        """'completed' when the ledger charged `rec` (a crash between the charge and the row), 'expired' when it
        is past its TTL (its row fails and its bytes go), None when it stays open."""
        found = self._ledger_receipt_for(rec.client_id, rec.upload_id)
        if found is not None:
            digest, receipt = found
            self._exec("UPDATE uploads SET state='complete', artifact_digest=?, receipt=?, updated_at=? WHERE upload_id=?",
                       (digest, json.dumps(receipt, sort_keys=True, separators=(",", ":")), now, rec.upload_id))
            self.part_path(rec.client_id, rec.upload_id).unlink(missing_ok=True)
            return "completed"
        if now - rec.updated_at > self.limits.upload_ttl_s:
            self._fail(rec, CodedError("UPLOAD_EXPIRED", f"no byte arrived for {self.limits.upload_ttl_s} s"))
            return "expired"
        return None

    def touch(self, upload_id: str) -> None:
        """Best effort (the time only delays the TTL): a full disk must not hide the refusal that ended the stream."""
        try:
            self._exec("UPDATE uploads SET updated_at=? WHERE upload_id=?", (time.time(), upload_id))
        except (CodedError, sqlite3.Error) as e:
            log.warning("upload %s: its last activity could not be recorded: %s", upload_id, e)


def charged_by_this_upload(ledger: Ledger, stored: Any, upload_id: str, same_receipt: bool = False) -> LedgerEntry | None:
    """The ledger entry that charged `stored` (live or staged) if this upload_id is the one that stored it
    (idempotent by upload id). `same_receipt`: the entry must also carry the receipt id written beside the
    copy before its charge; a staged copy needs it, because a crash before the charge leaves one behind while
    the ledger may hold an older, forgotten upload of the same bytes."""
    from provider_party.service.experts import META_FILE

    try:
        meta = json.loads((stored.folder / META_FILE).read_text())
    except (OSError, ValueError):
        return None
    if meta.get("upload_id") != upload_id:
        return None
    entry = ledger.upload_entry(stored.client_id, stored.artifact_digest)
    if entry is not None and same_receipt and entry.receipt_id != meta.get("receipt_id"):
        return None
    return entry


def _is_disk_full(e: BaseException) -> bool:
    if isinstance(e, OSError):
        return e.errno in (errno.ENOSPC, errno.EDQUOT)
    return "disk is full" in str(e) or "disk I/O error" in str(e)


def disk_full(what: str) -> RpcError:
    return RpcError("DISK_FULL", f"the provider's disk is full: {what}", rule="disk space")


__all__ = ["FinalizedUpload", "charged_by_this_upload", "ReadAhead", "UploadManager", "UploadRecord", "UploadSession", "UPLOAD_ID_RE"]
