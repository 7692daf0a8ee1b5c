"""Conversions between protocol objects and their llamdex.v1 messages, shared by both services."""

from __future__ import annotations

import json
from typing import Any

from protocol.dsse import Envelope
from protocol.receipts import receipt_digest
from protocol.rpc.llamdex.v1 import common_pb2

JOB_STATES = {"QUEUED": common_pb2.JOB_STATE_QUEUED, "RUNNING": common_pb2.JOB_STATE_RUNNING,
              "SUCCEEDED": common_pb2.JOB_STATE_SUCCEEDED, "FAILED": common_pb2.JOB_STATE_FAILED}
JOB_STATE_NAMES = {v: k for k, v in JOB_STATES.items()}


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
    """The DSSE envelope a Receipt message carries (only `envelope_json` is authoritative)."""
    return json.loads(msg.envelope_json)


def job_result_message(d: dict[str, Any]) -> common_pb2.JobResult:
    return common_pb2.JobResult(job_id=d["job_id"], client_id=d["client_id"], base_model_id=d["base_model_id"],
                                schema_digest=d["schema_digest"], connectors_reused=bool(d["connectors_reused"]),
                                state=JOB_STATES.get(d["state"], common_pb2.JOB_STATE_UNSPECIFIED), error=d.get("error", ""),
                                metrics_json=d.get("metrics_json", "{}"), seconds=float(d.get("seconds", 0.0)))


__all__ = ["JOB_STATES", "JOB_STATE_NAMES", "job_result_message", "receipt_envelope", "receipt_message"]
