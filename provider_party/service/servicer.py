"""`llamdex.v1.ProviderService` over gRPC: a thin layer that turns messages into `ProviderParty` calls.

Each handler identifies the caller (`Authenticator.identify`: mutual-TLS identity, registration,
rate limit), checks a request signature where the call changes state, calls the core, and builds
the response. Every refusal is a `CodedError` mapped to one gRPC status by `protocol.rpc_errors`
(the code also travels in the trailing metadata `llamdex-error-code`).
"""

from __future__ import annotations

import logging
import threading
from typing import Any

import grpc

from protocol.dp import ACCOUNTANTS
from protocol.hello_proof import sign_hello_proof
from protocol.keys import fingerprint, public_key_pem
from protocol.request_auth import FORGET_METHOD, forget_body
from protocol.rpc.llamdex.v1 import client_pb2, client_pb2_grpc, common_pb2, provider_pb2, provider_pb2_grpc
from protocol.rpc_errors import RpcError, guard, guard_stream
from protocol.tls import open_channel
from protocol.wire import JOB_STATES, UPLOAD_DIGESTS, job_result_message, receipt_message
from provider_party.service.admission import AskGate, StreamSlots, cancelled_after
from provider_party.service.config import ProviderConfig, RegisteredClient
from provider_party.service.core import AskResult, ProviderParty
from provider_party.service.jobs import Job
from provider_party.service.uploads import ReadAhead, UploadRecord

log = logging.getLogger(__name__)
PROTOCOL_VERSION = "llamdex.v1"
SERVICE_NAME = "llamdex.v1.ProviderService"
UPLOAD_READ_AHEAD_BYTES = 16 << 20   # received but not yet checked/written, per upload stream (then flow control)


def _next(it: Any) -> Any:
    try:
        return next(it)
    except StopIteration:
        return None


def _first_message(it: Any, context: Any, timeout_s: float) -> Any:
    """The stream's first message, or the call cancelled after `timeout_s`: a stream that never sends one would hold its
    server thread (and its client's stream place) for as long as its client keeps the connection open."""
    with cancelled_after(timeout_s, context.cancel):
        return _next(it)


class ProviderServicer(provider_pb2_grpc.ProviderServiceServicer):
    def __init__(self, config: ProviderConfig, party: ProviderParty | None = None):
        self.config = config
        self.party = party or ProviderParty(config, on_job_done=self._deliver_result)
        self.auth = self.party.auth
        lim = config.limits
        self.ask_gate = AskGate(lim.max_concurrent_asks, lim.ask_admission_wait_s, lim.max_asks_per_client)
        self.streams = StreamSlots(lim.max_workers - lim.reserved_workers, lim.max_streams_per_client)

    # --- job results to the clients' own services ---------------------------------------------------------
    def _deliver_result(self, job: Job) -> None:
        """Tells each client that asked for this job (and gave a callback address) its result."""
        for cid in sorted(job.watchers):
            client = self.config.client(cid)
            if client is None or not client.callback:
                continue
            threading.Thread(target=self._deliver_to, args=(client, job), daemon=True).start()

    def _deliver_to(self, client: RegisteredClient, job: Job) -> None:
        try:
            ch = open_channel(client.callback, self.config.tls, plaintext=self.config.plaintext)
            with ch:
                stub = client_pb2_grpc.ClientServiceStub(ch)
                stub.DeliverJobResult(client_pb2.DeliverJobResultRequest(result=job_result_message({**job.result_dict(), "client_id": client.client_id})),
                                      timeout=self.config.limits.callback_timeout_s,
                                      metadata=(("x-llamdex-client-id", self.config.provider_id),) if self.config.plaintext else None)
        except Exception as e:  # noqa: BLE001 - best effort: the client can always WatchJob
            log.warning("could not deliver job %s to %s at %s: %s", job.job_id, client.client_id, client.callback, e)

    # --- RPCs -------------------------------------------------------------------------------------------
    @guard
    def Hello(self, request, context):
        client = self.auth.identify(context)
        lim, party = self.config.limits, self.party
        proof = ""
        if request.challenge:   # signed for the caller as identified above, so a relayed challenge names the relay
            try:
                proof = sign_hello_proof(party.key, provider_id=self.config.provider_id, client_id=client.client_id, challenge=request.challenge)
            except ValueError as e:
                raise RpcError("BAD_REQUEST", str(e), rule="hello challenge") from None
        return provider_pb2.HelloResponse(
            protocol_version=PROTOCOL_VERSION, provider_id=self.config.provider_id, base_model_id=party.base_model_id(),
            schemas_ready=party.schemas_ready(), accepts_any_schema=True,
            limits=provider_pb2.Limits(
                max_message_bytes=lim.max_message_bytes, max_artifact_bytes=lim.max_artifact_bytes, max_chunk_bytes=lim.max_chunk_bytes,
                max_batch_questions=lim.max_batch_questions, max_question_chars=lim.max_question_chars,
                signature_max_skew_ms=lim.signature_max_skew_ms, upload_ttl_s=lim.upload_ttl_s, max_open_uploads=lim.max_open_uploads,
                max_page_size=lim.max_page_size, max_requests_per_second=lim.max_requests_per_second, max_job_queue=lim.max_job_queue,
                upload_digests=list(UPLOAD_DIGESTS), max_question_tokens=lim.max_question_tokens,
                max_streams_per_client=lim.max_streams_per_client),
            provider_public_key_pem=public_key_pem(party.key).decode("ascii"), provider_key_fingerprint=fingerprint(party.key),
            client_id=client.client_id, accountants=list(ACCOUNTANTS),
            receipt_keys_json=party.receipt_key_list.to_json() if party.receipt_key_list else "", hello_proof=proof)

    @guard
    def UploadExpert(self, request_iterator, context):
        client = self.auth.identify(context)
        with self.streams.hold(client.client_id, "UploadExpert"):
            first = _first_message(request_iterator, context, self.config.limits.upload_header_timeout_s)
            if first is None or first.WhichOneof("part") != "header":
                raise RpcError("BAD_REQUEST", "the first UploadExpert message must be an UploadHeader", rule="header first")
            # the chunks are received from here on, also while the core checks the header and commits its nonce and upload row
            chunks = ReadAhead(request_iterator, max_messages=max(2, UPLOAD_READ_AHEAD_BYTES // self.config.limits.max_chunk_bytes))
            out = self.party.receive_upload(client, first.header, chunks, stop=chunks.stop, stream_errors=(grpc.RpcError,), cancel=context.cancel)
        if not out.complete:
            return provider_pb2.UploadResponse(upload_id=out.record.upload_id, complete=False, received_bytes=out.received_bytes)
        return self._upload_response(out.record, out.checks, out.verify_seconds)

    def _upload_response(self, rec: UploadRecord, checks: list[str], seconds: float) -> provider_pb2.UploadResponse:
        return provider_pb2.UploadResponse(upload_id=rec.upload_id, complete=True, received_bytes=rec.total_bytes,
                                           artifact_digest=rec.artifact_digest or "", receipt=receipt_message(rec.receipt),
                                           verify_seconds=seconds, checks=checks)

    @guard
    def GetUploadStatus(self, request, context):
        client = self.auth.identify(context)
        uploads = self.party.uploads
        rec = uploads.status(request.upload_id, client.client_id)
        msg = provider_pb2.UploadStatus(upload_id=rec.upload_id, state=rec.state, received_bytes=uploads.received_bytes(rec),
                                        total_bytes=rec.total_bytes, artifact_digest=rec.artifact_digest or "", error=rec.error or "",
                                        digest=rec.tar_digest[0])
        if rec.state == "complete" and rec.receipt:
            msg.receipt.CopyFrom(receipt_message(rec.receipt))
        return msg

    @guard
    def Customize(self, request, context):
        client = self.auth.identify(context)
        r = self.party.customize(client, request.artifact_digest, request.preset, bool(request.retrain))
        return provider_pb2.CustomizeResponse(job_id=r.job.job_id, state=JOB_STATES[r.job.state], connectors_reused=r.connectors_reused,
                                              schema_digest=r.schema.digest, base_model_id=r.base_model_id)

    @guard_stream
    def WatchJob(self, request, context):
        client = self.auth.identify(context)
        jobs = self.party.jobs
        job = jobs.get(request.job_id, client.client_id)
        with self.streams.hold(client.client_id, "WatchJob"):
            for ev in jobs.watch(job, context.is_active):
                msg = common_pb2.JobEvent(job_id=job.job_id, state=JOB_STATES[ev.state], stage=ev.stage, fraction=ev.fraction,
                                          message=ev.message, time_ms=ev.time_ms)
                if ev.state in ("SUCCEEDED", "FAILED"):
                    msg.result.CopyFrom(job_result_message({**job.result_dict(), "client_id": client.client_id}))
                yield msg

    @guard
    def Ask(self, request, context):
        client = self.auth.identify(context)
        self.party.check_questions(list(request.questions))   # a malformed call is refused before it takes a place
        with self.ask_gate.admit(client.client_id):
            return _ask_response(self.party.ask(client, list(request.questions), request.artifact_digest, bool(request.include_base)))

    @guard
    def GetLedger(self, request, context):
        client = self.auth.identify(context)
        page, token = self.party.ledger_page(client, request.page_token, request.page_size)
        out = provider_pb2.GetLedgerResponse(next_page_token=token or "")
        for e in page:
            out.entries.add(seq=e.seq, kind=e.kind, dataset_id=e.dataset_id, artifact_digest=e.artifact_digest, entry_digest=e.entry_digest,
                            prev_digest=e.prev_digest, created_at=e.created_at, receipt=receipt_message(e.receipt))
        return out

    @guard
    def Forget(self, request, context):
        client = self.auth.identify(context)
        self.auth.check_signed(client, FORGET_METHOD, request.auth if request.HasField("auth") else None, forget_body(request))
        r = self.party.forget(client, request.artifact_digest)
        return provider_pb2.ForgetResponse(deleted=r.deleted, receipts=[receipt_message(x) for x in r.receipts])


def _ask_response(r: AskResult) -> provider_pb2.AskResponse:
    verbs = list(r.schema.label.verbalizers)
    out = provider_pb2.AskResponse(classes=list(r.schema.label.classes), verbalizers=verbs, artifact_digest=r.artifact_digest, seconds=r.seconds)
    for i, ans in enumerate(r.answers):
        probs = ans.probs.tolist()
        k = max(range(len(probs)), key=probs.__getitem__)
        a = out.answers.add(answer=verbs[k], class_index=k, probs=probs)
        if ans.expert_probs is not None:
            a.expert_probs.extend(ans.expert_probs.tolist())
        if r.base is not None:
            a.base_probs.extend(r.base[i].probs.tolist())
    return out


__all__ = ["PROTOCOL_VERSION", "ProviderServicer", "SERVICE_NAME"]
