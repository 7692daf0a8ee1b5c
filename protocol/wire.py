"""Conversions between protocol objects and their llamdex.v1 messages, shared by both services."""

from __future__ import annotations

import hashlib
import json
import re
import threading
from typing import Any

import blake3 as _blake3   # ~5x cheaper than SHA-256 per byte; a dependency of this package (and of model-signing)

from protocol.canonical import parse_json
from protocol.dsse import Envelope
from protocol.receipts import receipt_digest
from protocol.rpc.llamdex.v1 import common_pb2

JOB_STATES = {"QUEUED": common_pb2.JOB_STATE_QUEUED, "RUNNING": common_pb2.JOB_STATE_RUNNING,
              "SUCCEEDED": common_pb2.JOB_STATE_SUCCEEDED, "FAILED": common_pb2.JOB_STATE_FAILED}
JOB_STATE_NAMES = {v: k for k, v in JOB_STATES.items()}


# Digests accepted for upload chunks and whole tars, preferred first (Hello announces them).
UPLOAD_DIGESTS: tuple[str, ...] = ("blake3", "sha256")
# An upload's dataset_id and artifact_name: they name ledger rows and folders on the provider. The provider refuses others
# (BAD_REQUEST); the client checks them before it sends a byte.
WIRE_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


def check_wire_name(value: str, what: str) -> str:
    """`value` if it is a valid dataset_id / artifact_name; a BAD_REQUEST naming the rule otherwise."""
    from protocol.errors import CodedError

    if not WIRE_NAME_RE.fullmatch(value or ""):
        raise CodedError("BAD_REQUEST", f"{what} {value!r} must be a letter or digit followed by up to 63 letters, digits, '.', '_' or '-' "
                         "(it names the provider's ledger rows and folders)", rule=what)
    return value


# A job id as the provider makes them (uuid4 hex); the client names a delivered result's file by it.
JOB_ID_RE = re.compile(r"[A-Za-z0-9_-]{1,64}")


def check_job_id(value: str) -> str:
    """`value` if it can be a job id; a BAD_REQUEST otherwise (it becomes a file name on the receiving side)."""
    from protocol.errors import CodedError

    if not JOB_ID_RE.fullmatch(value or ""):
        raise CodedError("BAD_REQUEST", f"job_id {value[:80]!r} must be 1 to 64 letters, digits, '_' or '-'", rule="job_id")
    return value


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
    if alg == "blake3":
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


def receipt_message(envelope: dict[str, Any] | Envelope | str) -> common_pb2.Receipt:
    """A Receipt message from a DSSE envelope (dict, Envelope or JSON text)."""
    if isinstance(envelope, str):
        envelope = parse_json(envelope)
    if isinstance(envelope, Envelope):
        envelope = envelope.to_dict()
    env = Envelope.from_dict(envelope)
    pred = parse_json(env.payload).get("predicate", {})
    return common_pb2.Receipt(envelope_json=json.dumps(envelope, sort_keys=True, separators=(",", ":")), digest=receipt_digest(env),
                              receipt_id=str(pred.get("receipt_id", "")), sequence=int(pred.get("sequence", 0) or 0),
                              kind=str(pred.get("kind", "")))


def receipt_envelope(msg: common_pb2.Receipt) -> dict[str, Any]:
    """The DSSE envelope a Receipt message carries (only `envelope_json` is authoritative); ReceiptError if it is not JSON."""
    from protocol.errors import ReceiptError

    try:
        return parse_json(msg.envelope_json)
    except ValueError as e:
        raise ReceiptError("BAD_RECEIPT", f"Receipt.envelope_json is not JSON: {e}", rule="dsse envelope") from None


def job_result_message(d: dict[str, Any]) -> common_pb2.JobResult:
    return common_pb2.JobResult(job_id=d["job_id"], client_id=d["client_id"], base_model_id=d["base_model_id"],
                                schema_digest=d["schema_digest"], connectors_reused=bool(d["connectors_reused"]),
                                state=JOB_STATES.get(d["state"], common_pb2.JOB_STATE_UNSPECIFIED), error=d.get("error", ""),
                                metrics_json=d.get("metrics_json", "{}"), seconds=float(d.get("seconds", 0.0)))


__all__ = ["JOB_STATES", "JOB_STATE_NAMES", "UPLOAD_DIGESTS", "job_result_message", "preferred_upload_digest", "receipt_envelope", "receipt_message",
           "upload_digest_hex", "upload_digests"]
