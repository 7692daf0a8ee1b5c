"""The client side of every ProviderService call: mutual TLS, signed requests, resumable uploads,
and verification of every receipt the provider returns.

    pc = ProviderClient("10.77.0.1:50051", "alice", signing_key, tls=TLSFiles(...), provider_public_key="provider.pub")
    result = pc.upload(artifact_folder, dataset_id="titanic")     # receipt verified (and stored)
    job = pc.customize(result.artifact_digest)
    for event in pc.watch_job(job.job_id): ...
    answers = pc.ask(["Mrs. ... Did she survive?"])
"""

from __future__ import annotations

import contextlib
import functools
import logging
import queue
import secrets
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Sequence

import grpc

from protocol.artifact import pack_artifact
from protocol.crashpoints import crashpoint
from protocol.errors import ReceiptError
from protocol.hello_proof import new_challenge, verify_hello_proof
from protocol.keys import PrivateKey, fingerprint, load_public_key
from protocol.receipts import Receipt, verify_receipt
from protocol.request_auth import FORGET_METHOD, UPLOAD_METHOD, forget_body, sign_request, upload_body
from protocol.rpc.llamdex.v1 import common_pb2, provider_pb2, provider_pb2_grpc
from protocol.rpc_errors import error_code
from protocol.tls import IDENTITY_METADATA, TLSFiles, TransportError, open_channel
from protocol.wire import check_wire_name, preferred_upload_digest, receipt_envelope, upload_digest_hex, upload_digests

log = logging.getLogger(__name__)
MiB = 1 << 20
DEFAULT_CHUNK = 1 * MiB
RETRYABLE = (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED, grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.ABORTED)


def _resumable(e: grpc.RpcError) -> bool:
    """A broken stream, a busy upload, a corrupted chunk or a wrong offset: resume from what arrived."""
    if e.code() in RETRYABLE:
        return True
    return error_code(e) in ("CHUNK_DIGEST_MISMATCH", "OFFSET_MISMATCH")


@dataclass
class UploadResult:
    upload_id: str
    artifact_digest: str
    receipt_envelope: dict[str, Any]
    receipt: Receipt
    bytes: int
    seconds: float
    verify_seconds: float
    attempts: int
    checks: list[str] = field(default_factory=list)


def _explained(method: Any) -> Any:
    """A call whose UNAVAILABLE, when the transport is to blame (a refused or untrusted certificate, a name the
    certificate does not hold, an expired certificate), raises the `TransportError` that says which file or
    flag to fix (`protocol.tls_diagnosis`) instead of gRPC's "Socket closed"."""
    @functools.wraps(method)
    def call(self: "ProviderClient", *args: Any, **kwargs: Any) -> Any:
        try:
            return method(self, *args, **kwargs)
        except grpc.RpcError as e:
            problem = self.transport_problem(e)
            if problem is None:
                raise
            raise problem from e
    return call


def artifact_tar(artifact: str | Path | bytes) -> bytes:
    return artifact if isinstance(artifact, (bytes, bytearray)) else pack_artifact(Path(artifact))


def local_artifact_digest(tar: bytes) -> str:
    """The artifact digest (`sha256:<root>` of the signed statement) read from the tar's model.sig."""
    import base64
    import io
    import json
    import tarfile

    with tarfile.open(fileobj=io.BytesIO(tar), mode="r:") as t:
        sig = json.loads(t.extractfile("model.sig").read())
    st = json.loads(base64.b64decode(sig["dsseEnvelope"]["payload"]))
    return "sha256:" + st["subject"][0]["digest"]["sha256"]


def _pause_before_retry(e: grpc.RpcError, codes: tuple[str, ...], attempt: int, deadline: float, *, scale_s: float, cap_s: float,
                        said: str) -> None:
    """Sleeps a jittered pause growing with `attempt` (scale_s × 2^attempt, at most cap_s, at least half a scale) before the
    call is made again, or raises `e` when its code is not one the provider sheds load with, or the pause would pass
    `deadline`. Said once per call at warning level (the default): a user otherwise sees a stalled command."""
    pause = secrets.SystemRandom().uniform(scale_s / 2, min(cap_s, scale_s * 2 ** attempt))
    if error_code(e) not in codes or time.monotonic() + pause >= deadline:
        raise e
    (log.warning if attempt == 0 else log.debug)("%s", said)
    time.sleep(pause)


class ProviderClient:
    def __init__(self, address: str, client_id: str, signing_key: PrivateKey, *, tls: TLSFiles | None = None,
                 plaintext: bool = False, provider_public_key: Any = None, receipt_store: Any = None,
                 timeout_s: float = 60.0, server_name: str | None = None, max_message_bytes: int = 8 * MiB):
        self.address, self.client_id, self.key = address, client_id, signing_key
        self.timeout_s = timeout_s
        self.tls, self.plaintext, self.server_name = tls, plaintext, server_name
        self.channel = open_channel(address, tls, plaintext=plaintext, server_name=server_name,
                                    options=[("grpc.max_send_message_length", max_message_bytes),
                                             ("grpc.max_receive_message_length", max_message_bytes)])
        self.stub = provider_pb2_grpc.ProviderServiceStub(self.channel)
        self.metadata = ((IDENTITY_METADATA, client_id),) if plaintext else None
        self.provider_key = load_public_key(provider_public_key) if provider_public_key is not None else None
        self.trusted_keys: list[Any] | None = None   # after a verified receipt key rotation: the pinned key and its endorsed successors
        self.receipt_store = receipt_store
        self._hello: provider_pb2.HelloResponse | None = None

    def close(self) -> None:
        self.channel.close()

    def __enter__(self) -> "ProviderClient":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def wait_ready(self, timeout_s: float = 30.0) -> None:
        grpc.channel_ready_future(self.channel).result(timeout=timeout_s)

    def transport_problem(self, err: grpc.RpcError) -> TransportError | None:
        """For an UNAVAILABLE call under TLS, or one past its deadline (a peer that accepts and then stays silent): the
        transport fault that explains it, if there is one. A peer that is merely not (yet) listening is not one:
        callers that wait for the provider keep retrying."""
        if self.plaintext or self.tls is None or err.code() not in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
            return None
        from protocol.tls_diagnosis import diagnose_connection

        problem = diagnose_connection(self.address, self.tls, server_name=self.server_name, timeout_s=5.0)
        return None if problem is None or problem.code == "UNREACHABLE" else problem

    # --- hello and receipts ------------------------------------------------------------------------------
    @_explained
    def hello(self) -> provider_pb2.HelloResponse:
        """Greets the provider and checks, before anything else is sent, that the party answering holds the receipt
        key this client trusts: the announced key must be the pinned one (or endorsed from it through the key list),
        and the provider must sign this connection's fresh challenge with it, for this client (`protocol.hello_proof`).
        Nothing is kept (a first key, a rotated key list) until the proof checks."""
        challenge = new_challenge()
        hello = self.stub.Hello(provider_pb2.HelloRequest(client_version="llamdex-client/0.1", challenge=challenge),
                                timeout=self.timeout_s, metadata=self.metadata)
        key_list, trusted = None, None
        if self.provider_key is None:
            pinned = load_public_key(hello.provider_public_key_pem.encode("ascii"))
        else:
            pinned = self.provider_key
            if fingerprint(pinned) != hello.provider_key_fingerprint:
                key_list, trusted = self._rotation(hello)
        announced = [k for k in (trusted or [pinned]) if fingerprint(k) == hello.provider_key_fingerprint]
        if not announced:   # a first contact whose key and fingerprint disagree
            raise ReceiptError("PROVIDER_NOT_PROVEN", f"the provider announces key fingerprint {hello.provider_key_fingerprint}, but the "
                               f"key it sends is {fingerprint(pinned)}", rule="hello proof")
        verify_hello_proof(hello.hello_proof, announced, client_id=self.client_id, challenge=challenge)
        if self.provider_key is None:
            log.warning("no pinned provider key: trusting the key the provider announced and proved (%s)", hello.provider_key_fingerprint)
            self.provider_key = pinned
        if key_list is not None:
            self.trusted_keys = self.receipt_store.trust_key_list(key_list) if self.receipt_store is not None else trusted
            log.info("provider receipt key rotated: %s -> %s (endorsed through its key list)", fingerprint(pinned), hello.provider_key_fingerprint)
        self._hello = hello
        return hello

    def _rotation(self, hello: provider_pb2.HelloResponse) -> tuple[Any, list[Any]]:
        """The provider announces another receipt key than the pinned one: trusted only through its key list, in
        which the pinned key endorsed (step by step) the announced one. Returns the list and the keys it trusts;
        the receipt store keeps the list once the provider has proved it holds the announced key."""
        announced, pinned = hello.provider_key_fingerprint, fingerprint(self.provider_key)
        if not hello.receipt_keys_json:
            raise ReceiptError("UNTRUSTED_KEY", f"the provider announces key {announced}, but the pinned key is {pinned} and it "
                               "publishes no receipt key list that endorses the change", rule="pinned provider key")
        from protocol.receipt_keys import KeyList

        kl = KeyList.from_json(hello.receipt_keys_json)
        trusted = kl.trusted_keys(self.receipt_store.provider_key if self.receipt_store is not None else self.provider_key)
        if announced not in [fingerprint(k) for k in trusted]:
            raise ReceiptError("UNTRUSTED_KEY", f"the provider announces key {announced}, which its key list does not endorse from the "
                               f"pinned key {pinned}", rule="pinned provider key")
        return kl, trusted

    def _greeted(self) -> provider_pb2.HelloResponse:
        """This connection's Hello, made once before the first call that is charged or answered with a receipt. The
        provider's key is checked (and a rotation accepted through its key list) before anything is uploaded or
        deleted, and the upload knows the provider's digests and chunk limit."""
        return self._hello if self._hello is not None else self.hello()

    def _provider_key(self) -> Any:
        if self.provider_key is None:
            self.hello()
        return self.trusted_keys or self.provider_key

    def check_receipt(self, envelope: dict[str, Any], *, kind: str, artifact_digest: str | None = None) -> Receipt:
        """Verifies a receipt (signature, format, arithmetic), that it is this client's and about this
        artifact, and keeps it in the receipt store when there is one."""
        r = verify_receipt(envelope, self._provider_key())
        if r.client_id != self.client_id or r.kind != kind or (artifact_digest and r.artifact_digest != artifact_digest):
            raise ReceiptError("BAD_RECEIPT", f"receipt {r.receipt_id!r} is a {r.kind} receipt for {r.client_id!r} about {r.artifact_digest}; "
                               f"expected a {kind} receipt for {self.client_id!r} about {artifact_digest}", file=r.receipt_id, rule="receipt matches the request")
        if self.receipt_store is not None:
            self.receipt_store.add(envelope)
        return r

    # --- upload --------------------------------------------------------------------------------------------
    def _header(self, upload_id: str, dataset_id: str, artifact_name: str, tar: bytes, digest: tuple[str, str], offset: int) -> provider_pb2.UploadHeader:
        """A fresh, signed header (new time and nonce) for each stream of an upload; `digest` = (algorithm, hex) of the tar."""
        alg, hexd = digest
        h = provider_pb2.UploadHeader(upload_id=upload_id, dataset_id=dataset_id, artifact_name=artifact_name, total_bytes=len(tar),
                                      resume_offset=offset, **{f"artifact_{alg}": hexd})
        h.auth.CopyFrom(common_pb2.RequestSignature(**sign_request(self.key, self.client_id, UPLOAD_METHOD, upload_body(h)).to_proto_kwargs()))
        return h

    @staticmethod
    def _messages(header: provider_pb2.UploadHeader, tar: bytes, offset: int, chunk: int, cut: tuple[int, Any] | None,
                  alg: str = "sha256", digests: Sequence[str] | None = None) -> Iterator[Any]:
        """The header, then the chunks. `digests`: the chunks' `alg` digests, computed before the
        stream (`protocol.wire.upload_digests`, next to the tar's); without them (a resumed stream) each is
        computed just before its chunk is sent (a helper thread hashing ahead cost more in thread hand-offs
        than it overlapped)."""
        yield provider_pb2.UploadRequest(header=header)
        view = memoryview(tar)
        for i, pos in enumerate(range(offset, len(tar), chunk)):
            if cut is not None and pos - offset >= cut[0]:
                cut[1]()      # cancel the call: the stream breaks off mid-upload, as a dropped link would
                return
            data = view[pos:pos + chunk]
            crashpoint("client.upload_chunk")
            hexd = digests[i] if digests is not None else upload_digest_hex(alg, data)
            yield provider_pb2.UploadRequest(chunk=provider_pb2.UploadChunk(offset=pos, data=bytes(data), **{alg: hexd}))

    @_explained
    def upload_status(self, upload_id: str) -> provider_pb2.UploadStatus:
        return self.stub.GetUploadStatus(provider_pb2.GetUploadStatusRequest(upload_id=upload_id), timeout=self.timeout_s, metadata=self.metadata)

    @_explained
    def upload(self, artifact: str | Path | bytes, dataset_id: str, *, artifact_name: str = "expert", upload_id: str | None = None,
               chunk_bytes: int = DEFAULT_CHUNK, max_attempts: int = 5, timeout_s: float = 600.0,
               cut_after_bytes: int | None = None, digest: str | None = None, resume: bool | None = None) -> UploadResult:
        """Uploads a signed artifact (folder or tar bytes), resuming after a broken stream, and verifies
        the receipt. Hello comes first (once per connection): a receipt key the pinned key does not endorse
        stops the upload before the budget is charged. Chunks and the whole tar are named by `digest`
        ("blake3" or "sha256"; default: the cheapest one the provider announced); chunks are at most the
        provider's `max_chunk_bytes`. `upload_id` names the upload; with `resume` (the default when an id is given) the
        provider is first asked how much of it it holds; an id never sent before passes `resume=False`, which spares the
        provider's log a refused GetUploadStatus. `cut_after_bytes` (tests) abandons the first stream after that many bytes."""
        check_wire_name(dataset_id, "dataset_id")   # the provider's rule, before a byte is sent
        check_wire_name(artifact_name, "artifact_name")
        tar = artifact_tar(artifact)
        limits = self._greeted().limits
        if limits.max_chunk_bytes > 0:
            chunk_bytes = min(chunk_bytes, limits.max_chunk_bytes)
        t0 = time.perf_counter()
        offset, resp, attempts = 0, None, 0
        if upload_id and resume is not False:  # resuming a known upload: start where the provider stopped, with the digest it started with
            status = self._status_or_none(upload_id)
            offset = status.received_bytes if status is not None and status.state == "receiving" else 0
            if status is not None and status.digest and digest is None:
                digest = status.digest
        alg = digest or preferred_upload_digest(limits.upload_digests or None)
        tar_hex, chunk_digests = upload_digests(alg, tar, offset, chunk_bytes)   # the first stream's chunks, hashed beside the tar
        tar_digest, first = (alg, tar_hex), (offset, chunk_digests)
        digest = local_artifact_digest(tar)
        upload_id = upload_id or secrets.token_urlsafe(24)
        while attempts < max_attempts:
            attempts += 1
            header = self._header(upload_id, dataset_id, artifact_name, tar, tar_digest, offset)
            # the request iterator runs on gRPC's thread and may reach the cut before `future()` returns: it waits for the call
            call: queue.Queue[Any] = queue.Queue(maxsize=1)

            def cancel_call() -> None:
                with contextlib.suppress(queue.Empty):
                    call.get(timeout=30).cancel()
            cut = (cut_after_bytes, cancel_call) if (cut_after_bytes is not None and attempts == 1) else None
            try:
                known = first[1] if offset == first[0] else None
                fut = self.stub.UploadExpert.future(self._messages(header, tar, offset, chunk_bytes, cut, alg, known), timeout=timeout_s,
                                               metadata=self.metadata)
                call.put(fut)
                resp = fut.result()
            except grpc.FutureCancelledError:
                resp = provider_pb2.UploadResponse(upload_id=upload_id, complete=False, received_bytes=-1)
            except grpc.RpcError as e:
                if not _resumable(e) or attempts >= max_attempts:
                    raise
                log.info("upload %s: stream %d stopped (%s %s); resuming", upload_id, attempts, e.code().name, error_code(e) or "")
                status = self._status_or_none(upload_id)
                if status is not None and status.state == "complete":  # it finished; the answer was lost
                    resp = provider_pb2.UploadResponse(upload_id=upload_id, complete=True, received_bytes=len(tar),
                                                       artifact_digest=status.artifact_digest, receipt=status.receipt)
                    break
                if status is not None and status.state == "failed":
                    raise
                offset = status.received_bytes if status is not None else 0
                time.sleep(min(0.2 * attempts, 2.0))
                continue
            if resp.complete:
                break
            if resp.received_bytes < 0:  # our own cancel: ask the provider how far it got
                status = self._status_or_none(upload_id)
                offset = status.received_bytes if status is not None else 0
            else:
                offset = resp.received_bytes
        if resp is None or not resp.complete:
            raise TimeoutError(f"upload {upload_id} did not complete in {max_attempts} attempts")
        env = receipt_envelope(resp.receipt)
        receipt = self.check_receipt(env, kind="upload", artifact_digest=digest)
        if resp.artifact_digest != digest:
            raise ReceiptError("BAD_RECEIPT", f"the provider names artifact {resp.artifact_digest}, the client signed {digest}", rule="same artifact")
        return UploadResult(upload_id, digest, env, receipt, len(tar), time.perf_counter() - t0, resp.verify_seconds, attempts, list(resp.checks))

    def _status_or_none(self, upload_id: str) -> provider_pb2.UploadStatus | None:
        try:
            return self.upload_status(upload_id)
        except grpc.RpcError as e:
            if e.code() == grpc.StatusCode.NOT_FOUND:
                return None
            raise

    # --- customize, ask, ledger, forget -------------------------------------------------------------------
    @_explained
    def customize(self, artifact_digest: str = "", preset: str = "") -> provider_pb2.CustomizeResponse:
        return self.stub.Customize(provider_pb2.CustomizeRequest(artifact_digest=artifact_digest, preset=preset), timeout=self.timeout_s, metadata=self.metadata)

    def watch_job(self, job_id: str, timeout_s: float = 6 * 3600) -> Iterator[Any]:
        """The job's events until it ends. A provider holding its limit of streams refuses the watch at once
        (TOO_MANY_STREAMS) rather than queueing it behind other clients' streams; it is opened again after a jittered,
        growing pause until `timeout_s` has passed."""
        deadline, attempt = time.monotonic() + timeout_s, 0
        while True:
            call = self.stub.WatchJob(provider_pb2.WatchJobRequest(job_id=job_id), timeout=max(1.0, deadline - time.monotonic()),
                                      metadata=self.metadata)
            try:
                first = next(call)
            except StopIteration:
                return
            except grpc.RpcError as e:
                _pause_before_retry(e, ("TOO_MANY_STREAMS",), attempt, deadline, scale_s=1.0, cap_s=10.0,
                                    said=f"provider holds its limit of streams; watching job {job_id} again")
                attempt += 1
                continue
            yield first
            yield from call
            return

    @_explained
    def ask(self, questions: Sequence[str], artifact_digest: str = "", include_base: bool = False, batch_size: int = 16,
            timeout_s: float | None = None) -> list[provider_pb2.Answer]:
        """Questions may carry what end users tell about themselves: they go only to a provider that proved its key."""
        self._greeted()
        out: list[provider_pb2.Answer] = []
        for s in range(0, len(questions), batch_size):
            req = provider_pb2.AskRequest(questions=list(questions[s:s + batch_size]), artifact_digest=artifact_digest, include_base=include_base)
            out.extend(self._ask_with_retry(req, timeout_s or self.timeout_s).answers)
        return out

    def _ask_with_retry(self, req: provider_pb2.AskRequest, timeout_s: float) -> provider_pb2.AskResponse:
        """A busy provider sheds calls it cannot start soon (RESOURCE_EXHAUSTED OVERLOADED or QUEUE_FULL) instead of
        queueing them: the call is sent again after a jittered, growing pause, until `timeout_s` has passed."""
        deadline, attempt = time.monotonic() + timeout_s, 0
        while True:
            try:
                return self.stub.Ask(req, timeout=max(1.0, deadline - time.monotonic()), metadata=self.metadata)
            except grpc.RpcError as e:
                _pause_before_retry(e, ("OVERLOADED", "QUEUE_FULL"), attempt, deadline, scale_s=0.1, cap_s=2.0,
                                    said=f"provider busy ({error_code(e)}); asking again for up to {deadline - time.monotonic():.0f} s more")
                attempt += 1

    @_explained
    def ask_raw(self, questions: Sequence[str], artifact_digest: str = "", include_base: bool = False) -> provider_pb2.AskResponse:
        self._greeted()
        return self.stub.Ask(provider_pb2.AskRequest(questions=list(questions), artifact_digest=artifact_digest, include_base=include_base),
                             timeout=self.timeout_s, metadata=self.metadata)

    @_explained
    def ledger(self, page_size: int = 100) -> list[provider_pb2.LedgerEntry]:
        out, token = [], ""
        while True:
            resp = self.stub.GetLedger(provider_pb2.GetLedgerRequest(page_size=page_size, page_token=token), timeout=self.timeout_s, metadata=self.metadata)
            out.extend(resp.entries)
            token = resp.next_page_token
            if not token:
                return out

    def ledger_receipts(self) -> list[dict[str, Any]]:
        return [receipt_envelope(e.receipt) for e in self.ledger()]

    @_explained
    def forget(self, artifact_digest: str = "") -> tuple[list[Receipt], list[str]]:
        self._greeted()   # the deletion receipts are checked under the key the provider announces, endorsed from the pinned one
        req = provider_pb2.ForgetRequest(artifact_digest=artifact_digest)
        req.auth.CopyFrom(common_pb2.RequestSignature(**sign_request(self.key, self.client_id, FORGET_METHOD, forget_body(req)).to_proto_kwargs()))
        resp = self.stub.Forget(req, timeout=self.timeout_s, metadata=self.metadata)
        receipts = [self.check_receipt(receipt_envelope(r), kind="deletion") for r in resp.receipts]
        return receipts, list(resp.deleted)


__all__ = ["DEFAULT_CHUNK", "ProviderClient", "UploadResult", "artifact_tar", "local_artifact_digest"]
