"""Conversions between protocol objects and their llamdex.v1 messages, shared by both services."""

from __future__ import annotations

import hashlib
import json
import threading
from typing import Any

try:  # BLAKE3 (PyPI `blake3`, already required by model-signing): ~5x cheaper than SHA-256 per byte
    import blake3 as _blake3
except ImportError:  # pragma: no cover - the protocol falls back to SHA-256
    _blake3 = None

from protocol.dsse import Envelope
from protocol.receipts import receipt_digest
from protocol.rpc.llamdex.v1 import common_pb2, provider_pb2

JOB_STATES = {"QUEUED": common_pb2.JOB_STATE_QUEUED, "RUNNING": common_pb2.JOB_STATE_RUNNING,
              "SUCCEEDED": common_pb2.JOB_STATE_SUCCEEDED, "FAILED": common_pb2.JOB_STATE_FAILED}
JOB_STATE_NAMES = {v: k for k, v in JOB_STATES.items()}


# Digests accepted for upload chunks and whole tars, preferred first (Hello announces them).
UPLOAD_DIGESTS: tuple[str, ...] = ("blake3", "sha256") if _blake3 is not None else ("sha256",)


def preferred_upload_digest(accepted: Any = None) -> str:
    """The cheapest digest both sides support (`accepted`: the provider's `Limits.upload_digests`; empty or None = old provider)."""
    if accepted:
        for alg in UPLOAD_DIGESTS:
            if alg in accepted:
                return alg
        return "sha256"
    return UPLOAD_DIGESTS[0]


def upload_digest_hex(alg: str, data: Any) -> str:
    """Hex digest of `data` (bytes or memoryview); both hashes release the GIL on large buffers."""
    if alg == "blake3" and _blake3 is not None:
        return _blake3.blake3(data).hexdigest()
    if alg == "sha256":
        return hashlib.sha256(data).hexdigest()
    raise ValueError(f"unsupported upload digest {alg!r}; supported: {list(UPLOAD_DIGESTS)}")


def upload_digests(alg: str, data: Any, offset: int, chunk: int) -> tuple[str, list[str]]:
    """(hex digest of the whole of `data`, hex digests of its chunks [offset, offset+chunk), ...), computed at once:
    the whole on a helper thread, the chunks on this one. Both hashes release the GIL, so with a free core
    this takes the time of one pass instead of two (and never more than two)."""
    if alg not in UPLOAD_DIGESTS:
        raise ValueError(f"unsupported upload digest {alg!r}; supported: {list(UPLOAD_DIGESTS)}")
    view = memoryview(data)
    whole: list[Any] = []

    def run() -> None:
        try:
            whole.append(upload_digest_hex(alg, view))
        except BaseException as e:  # noqa: BLE001 - re-raised below
            whole.append(e)

    th = threading.Thread(target=run, name="llamdex-tar-digest", daemon=True)
    th.start()
    try:
        parts = [upload_digest_hex(alg, view[p:p + chunk]) for p in range(offset, len(view), chunk)]
    finally:
        th.join()
    if isinstance(whole[0], BaseException):
        raise whole[0]
    return whole[0], parts


class ChunkView:
    """An `UploadRequest(chunk=UploadChunk(...))` whose `data` is a memoryview of the received bytes
    (`parse_upload_request`); duck-types the parts of the message the provider reads."""

    __slots__ = ("offset", "data", "_alg", "_hex")

    def __init__(self, offset: int, data: memoryview, alg: str | None, hexd: str):
        self.offset, self.data, self._alg, self._hex = offset, data, alg, hexd

    def WhichOneof(self, name: str) -> str | None:  # noqa: N802 - the protobuf name
        return {"part": "chunk", "digest": self._alg}.get(name)

    @property
    def chunk(self) -> "ChunkView":
        return self

    @property
    def sha256(self) -> str:
        return self._hex if self._alg == "sha256" else ""

    @property
    def blake3(self) -> str:
        return self._hex if self._alg == "blake3" else ""


def _varint(buf: Any, pos: int, end: int) -> tuple[int, int]:
    v = shift = 0
    while True:
        if pos >= end or shift > 63:
            raise ValueError("bad varint")
        b = buf[pos]
        pos += 1
        v |= (b & 0x7F) << shift
        if not b & 0x80:
            return v, pos
        shift += 7


def _parse_chunk(buf: bytes) -> ChunkView | None:
    """The chunk of a plain `UploadRequest{chunk: {offset, data, sha256|blake3}}`, or None for anything
    else (a header, unknown or repeated outer fields...), which the full protobuf parser then handles."""
    n = len(buf)
    if n < 2 or buf[0] != 0x12:
        return None
    ln, pos = _varint(buf, 1, n)
    if pos + ln != n:
        return None
    mv = memoryview(buf)
    offset, data, alg, hexd = 0, mv[0:0], None, ""
    while pos < n:
        tag, pos = _varint(buf, pos, n)
        if tag == 0x08:
            offset, pos = _varint(buf, pos, n)
            if offset >= 1 << 63:
                offset -= 1 << 64
        elif tag in (0x12, 0x1A, 0x22):
            ln, pos = _varint(buf, pos, n)
            if pos + ln > n:
                return None
            if tag == 0x12:
                data = mv[pos:pos + ln]
            else:
                try:
                    hexd = bytes(mv[pos:pos + ln]).decode("utf-8")
                except UnicodeDecodeError:
                    return None
                alg = "sha256" if tag == 0x1A else "blake3"
            pos += ln
        else:
            return None
    return ChunkView(offset, data, alg, hexd)


def parse_upload_request(buf: bytes) -> Any:
    """`UploadRequest.FromString(buf)`, except that a plain chunk (every message but the header, in
    practice) becomes a `ChunkView` whose data is a view of `buf`: no copy of the chunk's bytes."""
    try:
        view = _parse_chunk(buf)
    except ValueError:
        view = None
    return view if view is not None else provider_pb2.UploadRequest.FromString(buf)


def receipt_message(envelope: dict[str, Any] | Envelope | str) -> common_pb2.Receipt:
    """A Receipt message from a DSSE envelope (dict, Envelope or JSON text)."""
    if isinstance(envelope, str):
        envelope = json.loads(envelope)
    if isinstance(envelope, Envelope):
        envelope = envelope.to_dict()
    env = Envelope.from_dict(envelope)
    pred = json.loads(env.payload).get("predicate", {})
    return common_pb2.Receipt(envelope_json=json.dumps(envelope, sort_keys=True, separators=(",", ":")), digest=receipt_digest(env),
                              receipt_id=str(pred.get("receipt_id", "")), sequence=int(pred.get("sequence", 0) or 0),
                              kind=str(pred.get("kind", "")))


def receipt_envelope(msg: common_pb2.Receipt) -> dict[str, Any]:
    """The DSSE envelope a Receipt message carries (only `envelope_json` is authoritative); ReceiptError if it is not JSON."""
    from protocol.errors import ReceiptError

    try:
        return json.loads(msg.envelope_json)
    except ValueError as e:
        raise ReceiptError("BAD_RECEIPT", f"Receipt.envelope_json is not JSON: {e}", rule="dsse envelope") from None


def job_result_message(d: dict[str, Any]) -> common_pb2.JobResult:
    return common_pb2.JobResult(job_id=d["job_id"], client_id=d["client_id"], base_model_id=d["base_model_id"],
                                schema_digest=d["schema_digest"], connectors_reused=bool(d["connectors_reused"]),
                                state=JOB_STATES.get(d["state"], common_pb2.JOB_STATE_UNSPECIFIED), error=d.get("error", ""),
                                metrics_json=d.get("metrics_json", "{}"), seconds=float(d.get("seconds", 0.0)))


__all__ = ["ChunkView", "JOB_STATES", "JOB_STATE_NAMES", "UPLOAD_DIGESTS", "job_result_message", "parse_upload_request", "preferred_upload_digest", "receipt_envelope", "receipt_message",
           "upload_digest_hex", "upload_digests"]
