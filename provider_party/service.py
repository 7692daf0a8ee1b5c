"""The provider's gRPC service (`llamdex.v1.ProviderService`) and its server.

Handlers stay thin: identity and signatures (`auth`), uploads and verification (`uploads`), the
expert store (`experts`), the ledger (`ledger`), connector jobs (`jobs`). Every refusal is a
`CodedError` mapped to one gRPC status by `protocol.rpc_errors` (the code also travels in the
trailing metadata `llamdex-error-code`). Start a server with `ProviderServer(config).start()` or
`llamdex provider serve`.
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2_grpc

from protocol.dp import ACCOUNTANTS
from protocol.errors import BudgetError
from protocol.keys import fingerprint, load_private_key, public_key_pem
from protocol.request_auth import FORGET_METHOD, UPLOAD_METHOD, forget_body, upload_body
from protocol.rpc.llamdex.v1 import client_pb2, client_pb2_grpc, common_pb2, provider_pb2, provider_pb2_grpc
from protocol.rpc_errors import RpcError, guard, guard_stream
from protocol.serving import announce_serving
from protocol.tls import add_port, open_channel
from protocol.wire import JOB_STATES, UPLOAD_DIGESTS, job_result_message, parse_upload_request, receipt_message
from provider_party.auth import Authenticator
from provider_party.config import ProviderConfig, RegisteredClient
from provider_party.experts import ExpertStore, ForgetJournal, StoredExpert
from provider_party.jobs import Job, JobManager, JobStore
from provider_party.ledger import Ledger
from provider_party.uploads import ReadAhead, UploadManager, UploadRecord

log = logging.getLogger(__name__)
PROTOCOL_VERSION = "llamdex.v1"
SERVICE_NAME = "llamdex.v1.ProviderService"
EXPERT_CACHE = 32
UPLOAD_READ_AHEAD_BYTES = 16 << 20   # received but not yet checked/written, per upload stream (then flow control)


def _next(it: Any) -> Any:
    try:
        return next(it)
    except StopIteration:
        return None


class ProviderServicer(provider_pb2_grpc.ProviderServiceServicer):
    def __init__(self, config: ProviderConfig):
        self.config = config
        state = Path(config.state)
        state.mkdir(parents=True, exist_ok=True)
        self.key = load_private_key(config.key)
        self.ledger = Ledger(state / "ledger.db", signing_key=self.key)
        self.auth = Authenticator(config, state / "state.db")
        self.uploads = UploadManager(state / "uploads", state / "state.db", config.limits)
        self.experts = ExpertStore(state / "experts")
        self.forgets = ForgetJournal(state / "state.db")
        self.ledger_lock = threading.Lock()
        from provider_party.connector_store import ConnectorStore

        self.connectors = ConnectorStore(config.connectors)
        self._base = None
        self._base_lock = threading.Lock()
        self._models: dict[str, Any] = {}
        self._expert_cache: "OrderedDict[tuple[str, str], Any]" = OrderedDict()
        self._cache_lock = threading.Lock()
        self.recovery = self._recover()
        self.budget_changes = self._apply_configured_budgets()
        self.jobs = JobManager(self._run_job, config.limits.max_job_queue, on_done=self._deliver_result, store=JobStore(state / "state.db"))
        self.recovery["jobs_failed"] = self.jobs.interrupted
        if self.jobs.interrupted:
            log.warning("%d connector job(s) were cut off by the last stop; recorded as FAILED", self.jobs.interrupted)

    # --- start-up recovery -----------------------------------------------------------------------------
    def _client_entries(self, client_id: str) -> list[Any]:
        out, token = [], None
        while True:
            page, token = self.ledger.entries(client_id=client_id, page_token=token, page_size=1000)
            out += page
            if not token:
                return out

    def _last_kind(self, client_id: str, digest: str) -> str | None:
        kinds = [e.kind for e in self._client_entries(client_id) if e.artifact_digest == digest]
        return kinds[-1] if kinds else None

    def _receipt_for_upload(self, client_id: str, upload_id: str) -> tuple[str, dict] | None:
        import json

        for e in self.experts.live(client_id):
            meta = json.loads((e.folder / "provider.json").read_text())
            if meta.get("upload_id") == upload_id:
                for entry in reversed(self._client_entries(client_id)):
                    if entry.artifact_digest == e.artifact_digest and entry.kind == "upload":
                        return e.artifact_digest, entry.receipt
        return None

    def _recover(self) -> dict[str, Any]:
        problems = self.ledger.verify_chain()
        if problems:
            raise RuntimeError(f"the ledger at {self.ledger.path} does not verify: {[p.reason for p in problems[:5]]}")
        counts = self.experts.reconcile(self._last_kind)
        counts.update(self._finish_forgets())
        counts.update(self.uploads.recover(self._receipt_for_upload))
        if any(counts.values()):
            log.warning("recovered after an unclean stop: %s", counts)
        return counts

    def _apply_configured_budgets(self) -> list[str]:
        """The configuration is where an operator sets budgets, but a dataset's budget enters the ledger at
        its first upload; a later change of `[[clients]]` budgets is applied here, at start, so that it
        does not go unnoticed. A budget below what the dataset already spent is not applied: the ledger
        keeps its budget and the start-up log says so. A change shows in the next receipt's `budget`."""
        changes = []
        for client in self.config.clients:
            for b in self.ledger.budgets(client.client_id):
                eps, delta = client.budget_for(b.dataset_id)
                if (eps, delta) == (b.epsilon_budget, b.delta_budget):
                    continue
                what = f"budget of client {client.client_id!r} dataset {b.dataset_id!r}: ε {b.epsilon_budget:g} → {eps:g}, δ {b.delta_budget:g} → {delta:g}"
                try:
                    self.ledger.set_budget(client.client_id, b.dataset_id, eps, delta)
                except BudgetError as e:
                    log.error("configured %s NOT applied: %s; the ledger keeps ε %g, δ %g", what, e, b.epsilon_budget, b.delta_budget)
                    changes.append(f"refused: {what}")
                    continue
                log.warning("configured %s applied (it shows in the next receipt of that dataset)", what)
                changes.append(f"applied: {what}")
        return changes

    def _finish_forgets(self) -> dict[str, int]:
        """Forgets cut off between their ledger entry and the deletion of files. The ledger decides: if the
        deletion entry committed, what its signed receipt lists as deleted is deleted now (the expert by
        `ExpertStore.reconcile`, the connectors here, unless a live expert uses them); if not, nothing was
        promised and nothing is deleted."""
        counts = {"forgets_finished": 0, "forgets_dropped": 0, "connectors_deleted": 0}
        for f in self.forgets.pending():
            cid, digest = f["client_id"], f["artifact_digest"]
            last = None
            for e in self._client_entries(cid):
                if e.artifact_digest == digest:
                    last = e
            if last is None or last.kind != "deletion":
                counts["forgets_dropped"] += 1
            else:
                deleted = _receipt_predicate(last.receipt).get("deleted") or []
                in_use = [o for o in self.experts.live() if o.schema_digest == f["schema_digest"]]
                if "connectors" in deleted and not in_use and self.connectors.delete(f["base_model_id"], f["schema_digest"]):
                    counts["connectors_deleted"] += 1
                counts["forgets_finished"] += 1
            self.forgets.done(cid, digest)
        return counts

    # --- base model, connectors, experts ------------------------------------------------------------------
    def base_model_id(self) -> str:
        if self._base is not None:
            return self._base.model_id
        if self.config.base_model == "embedded":
            from provider_party.base_llm import EMBEDDED_NAME, embedded_cache_dir

            try:
                return f"{EMBEDDED_NAME}@{embedded_cache_dir().name.rsplit('-', 1)[-1]}"
            except FileNotFoundError:
                return "embedded"
        return self.config.base_model

    def ensure_base(self) -> Any:
        with self._base_lock:
            if self._base is None:
                from provider_party.base_llm import load_base_llm

                t = time.perf_counter()
                self._base = load_base_llm(self.config.base_model)
                log.info("base LLM %s loaded in %.1f s", self._base.model_id, time.perf_counter() - t)
            return self._base

    def preload(self) -> threading.Thread:
        th = threading.Thread(target=self.ensure_base, name="llamdex-base-preload", daemon=True)
        th.start()
        return th

    def _preset(self, name: str) -> Any:
        from provider_party.connector_training import PRESETS, Preset

        if not name:
            p = self.config.preset
            return p if isinstance(p, Preset) else PRESETS[p]
        if name not in PRESETS:
            raise RpcError("BAD_REQUEST", f"preset {name!r} is not one of {sorted(PRESETS)}", rule="preset")
        return PRESETS[name]

    def _model_for(self, schema: Any) -> Any:
        with self._cache_lock:
            m = self._models.get(schema.digest)
        if m is not None:
            return m
        base = self.ensure_base()
        if not self.connectors.has(base, schema):
            raise RpcError("NOT_CUSTOMIZED", f"no connectors for schema {schema.digest[:19]}… on {base.model_id}; call Customize and "
                           "wait for its job (WatchJob) first", rule="customize before asking")
        m = self.connectors.load(base, schema)
        with self._cache_lock:
            self._models[schema.digest] = m
        return m

    def _expert_for(self, client: RegisteredClient, stored: StoredExpert) -> tuple[Any, Any]:
        """(expert module, schema): the stored artifact is verified again, then tensors load via safetensors."""
        from protocol.expert_spec import load_expert_state

        key = (client.client_id, stored.artifact_digest)
        with self._cache_lock:
            hit = self._expert_cache.get(key)
            if hit is not None:
                self._expert_cache.move_to_end(key)
                return hit
        verified = self.experts.verify(stored, client.public_key)
        expert = load_expert_state(verified.spec, verified.load_tensors())
        with self._cache_lock:
            self._expert_cache[key] = (expert, verified.schema)
            while len(self._expert_cache) > EXPERT_CACHE:
                self._expert_cache.popitem(last=False)
        return expert, verified.schema

    def _live_expert(self, client: RegisteredClient, digest: str) -> StoredExpert:
        if digest:
            e = self.experts.get(client.client_id, digest)
        else:
            live = self.experts.live(client.client_id)
            e = live[-1] if live else None
        if e is None:
            raise RpcError("EXPERT_NOT_FOUND", f"client {client.client_id!r} has no live expert {digest or '(none uploaded)'}; upload one first",
                           rule="own live experts")
        return e

    # --- jobs -------------------------------------------------------------------------------------------
    def _run_job(self, job: Job, progress: Any) -> tuple[bool, dict]:
        progress("loading base model", 0.0)
        base = self.ensure_base()
        schema = job.payload
        model, trained_now = self.connectors.get_or_train(base, schema, self._preset(job.preset), seed=0, progress=False,
                                                          retrain=job.retrain, on_progress=progress)
        with self._cache_lock:
            self._models[schema.digest] = model
        return (not trained_now), dict(model.config.metrics or {})

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
        lim = self.config.limits
        ready = []
        if self.connectors.root.is_dir():
            mdir = self.connectors.root / _safe_model_dir(self.base_model_id())
            ready = sorted(p.name for p in mdir.iterdir() if (p / "connectors.json").is_file()) if mdir.is_dir() else []
        return provider_pb2.HelloResponse(
            protocol_version=PROTOCOL_VERSION, provider_id=self.config.provider_id, base_model_id=self.base_model_id(),
            schemas_ready=ready, accepts_any_schema=True,
            limits=provider_pb2.Limits(
                max_message_bytes=lim.max_message_bytes, max_artifact_bytes=lim.max_artifact_bytes, max_chunk_bytes=lim.max_chunk_bytes,
                max_batch_questions=lim.max_batch_questions, max_question_chars=lim.max_question_chars,
                signature_max_skew_ms=lim.signature_max_skew_ms, upload_ttl_s=lim.upload_ttl_s, max_open_uploads=lim.max_open_uploads,
                max_page_size=lim.max_page_size, max_requests_per_second=lim.max_requests_per_second, max_job_queue=lim.max_job_queue,
                upload_digests=list(UPLOAD_DIGESTS)),
            provider_public_key_pem=public_key_pem(self.key).decode("ascii"), provider_key_fingerprint=fingerprint(self.key),
            client_id=client.client_id, accountants=list(ACCOUNTANTS))

    @guard
    def UploadExpert(self, request_iterator, context):
        client = self.auth.identify(context)
        first = _next(request_iterator)
        if first is None or first.WhichOneof("part") != "header":
            raise RpcError("BAD_REQUEST", "the first UploadExpert message must be an UploadHeader", rule="header first")
        h = first.header
        self.uploads.validate_header(h)
        lim = self.config.limits
        # the chunks are received from here on, also while the signature, the nonce and the upload row are committed
        chunks = ReadAhead(request_iterator, max_messages=max(2, UPLOAD_READ_AHEAD_BYTES // lim.max_chunk_bytes))
        try:
            self.auth.check_signed(client, UPLOAD_METHOD, h.auth if h.HasField("auth") else None, upload_body(h))
            opened = self.uploads.open(client, h)
        except BaseException:
            chunks.stop()   # nothing received for a refused header is used
            raise
        if isinstance(opened, UploadRecord):  # already complete: the same answer again, nothing charged
            chunks.stop()
            return self._upload_response(opened, [], 0.0)
        session, cut = opened, False
        try:
            for msg in chunks:
                if msg.WhichOneof("part") != "chunk":
                    raise RpcError("BAD_REQUEST", "only UploadChunk messages may follow the header", rule="one header")
                c = msg.chunk
                alg = c.WhichOneof("digest")
                if alg is None:
                    raise RpcError("BAD_REQUEST", f"chunk at offset {c.offset} carries no digest; set blake3 or sha256", rule="chunk digest")
                session.write(c.offset, c.data, getattr(c, alg), lim.max_chunk_bytes, alg)
        except grpc.RpcError:
            cut = True  # the client went away; what arrived is kept for a resume
        finally:
            chunks.stop()
            session.close()
            if session.received < session.record.total_bytes:
                self.uploads.touch(h.upload_id)   # unfinished: its TTL counts from the last byte (a complete one is finalized now)
        rec = session.record
        if cut or session.received < rec.total_bytes:
            return provider_pb2.UploadResponse(upload_id=rec.upload_id, complete=False, received_bytes=session.received)
        fin = self.uploads.finalize(rec, client, self.ledger, self.experts, self.ledger_lock)
        log.info("upload %s from %s accepted: %d bytes, artifact %s, receipt %s; finalize %.3f s wall, %.3f s CPU", rec.upload_id,
                 client.client_id, rec.total_bytes, fin.record.artifact_digest, fin.entry.receipt_id, fin.verify_seconds, fin.verify_cpu_seconds)
        return self._upload_response(fin.record, fin.checks, fin.verify_seconds)

    def _upload_response(self, rec: UploadRecord, checks: list[str], seconds: float) -> provider_pb2.UploadResponse:
        return provider_pb2.UploadResponse(upload_id=rec.upload_id, complete=True, received_bytes=rec.total_bytes,
                                           artifact_digest=rec.artifact_digest or "", receipt=receipt_message(rec.receipt),
                                           verify_seconds=seconds, checks=checks)

    @guard
    def GetUploadStatus(self, request, context):
        client = self.auth.identify(context)
        rec = self.uploads.get(request.upload_id, client.client_id)
        msg = provider_pb2.UploadStatus(upload_id=rec.upload_id, state=rec.state, received_bytes=self.uploads.received_bytes(rec),
                                        total_bytes=rec.total_bytes, artifact_digest=rec.artifact_digest or "", error=rec.error or "",
                                        digest=rec.tar_digest[0])
        if rec.state == "complete" and rec.receipt:
            msg.receipt.CopyFrom(receipt_message(rec.receipt))
        return msg

    @guard
    def Customize(self, request, context):
        client = self.auth.identify(context)
        stored = self._live_expert(client, request.artifact_digest)
        if request.retrain and not self.config.allow_retrain:
            raise RpcError("POLICY_REFUSED", "this provider does not retrain existing connectors on request", rule="allow_retrain")
        self._preset(request.preset)  # refuses an unknown preset before a job exists
        from protocol.schema import PublicSchema

        schema = PublicSchema.load(stored.artifact_dir / "schema.json")  # verified at upload
        job = self.jobs.submit(client.client_id, schema.digest, self.base_model_id(), request.preset or "", bool(request.retrain), schema)
        reused = self._base is not None and self.connectors.has(self._base, schema) and not request.retrain
        return provider_pb2.CustomizeResponse(job_id=job.job_id, state=JOB_STATES[job.state], connectors_reused=reused,
                                              schema_digest=schema.digest, base_model_id=self.base_model_id())

    @guard_stream
    def WatchJob(self, request, context):
        client = self.auth.identify(context)
        job = self.jobs.get(request.job_id, client.client_id)
        for ev in self.jobs.watch(job, context.is_active):
            msg = common_pb2.JobEvent(job_id=job.job_id, state=JOB_STATES[ev.state], stage=ev.stage, fraction=ev.fraction,
                                      message=ev.message, time_ms=ev.time_ms)
            if ev.state in ("SUCCEEDED", "FAILED"):
                msg.result.CopyFrom(job_result_message({**job.result_dict(), "client_id": client.client_id}))
            yield msg

    @guard
    def Ask(self, request, context):
        client = self.auth.identify(context)
        lim = self.config.limits
        qs = list(request.questions)
        if not 1 <= len(qs) <= lim.max_batch_questions:
            raise RpcError("BAD_REQUEST", f"Ask takes 1..{lim.max_batch_questions} questions, got {len(qs)}", rule="max_batch_questions")
        for i, q in enumerate(qs):
            if not q.strip() or len(q) > lim.max_question_chars:
                raise RpcError("BAD_REQUEST", f"question {i} must be 1..{lim.max_question_chars} characters (got {len(q)})", rule="max_question_chars")
        stored = self._live_expert(client, request.artifact_digest)
        expert, schema = self._expert_for(client, stored)
        model = self._model_for(schema)
        t = time.perf_counter()
        ans = model.answer(qs, expert)
        base = model.answer_base(qs) if request.include_base else None
        seconds = time.perf_counter() - t
        verbs = list(schema.label.verbalizers)
        out = provider_pb2.AskResponse(classes=list(schema.label.classes), verbalizers=verbs, artifact_digest=stored.artifact_digest, seconds=seconds)
        for i in range(len(qs)):
            probs = ans.probs[i].tolist()
            k = max(range(len(probs)), key=probs.__getitem__)
            a = out.answers.add(answer=verbs[k], class_index=k, probs=probs)
            if ans.expert_probs is not None:
                a.expert_probs.extend(ans.expert_probs[i].tolist())
            if base is not None:
                a.base_probs.extend(base.probs[i].tolist())
        return out

    @guard
    def GetLedger(self, request, context):
        client = self.auth.identify(context)
        size = request.page_size or 100
        if not 1 <= size <= min(self.config.limits.max_page_size, 1000):
            raise RpcError("BAD_PAGE_SIZE", f"page_size must be in 1..{self.config.limits.max_page_size}, got {request.page_size}", rule="max_page_size")
        page, token = self.ledger.entries(client_id=client.client_id, page_token=request.page_token or None, page_size=size)
        out = provider_pb2.GetLedgerResponse(next_page_token=token or "")
        for e in page:
            out.entries.add(seq=e.seq, kind=e.kind, dataset_id=e.dataset_id, artifact_digest=e.artifact_digest, entry_digest=e.entry_digest,
                            prev_digest=e.prev_digest, created_at=e.created_at, receipt=receipt_message(e.receipt))
        return out

    @guard
    def Forget(self, request, context):
        client = self.auth.identify(context)
        self.auth.check_signed(client, FORGET_METHOD, request.auth if request.HasField("auth") else None, forget_body(request))
        cid = client.client_id
        with self.ledger_lock:
            targets = self.experts.live(cid)
            if request.artifact_digest:
                targets = [e for e in targets if e.artifact_digest == request.artifact_digest]
            if not targets:
                raise RpcError("NOTHING_TO_FORGET", f"client {cid!r} has no live expert {request.artifact_digest or ''}".rstrip(), rule="own live experts")
            out = provider_pb2.ForgetResponse()
            doomed = {(cid, e.artifact_digest) for e in targets}
            base_id = self.base_model_id()
            for e in targets:
                others = [o for o in self.experts.live() if o.schema_digest == e.schema_digest and (o.client_id, o.artifact_digest) not in doomed]
                drop_connectors = not others and self.connectors.path_for(base_id, e.schema_digest).exists()
                what = ["expert"] + (["connectors"] if drop_connectors else [])
                self.forgets.note(cid, e.artifact_digest, e.schema_digest, base_id)   # what the ledger entry will not name
                entry = self.ledger.append_deletion(cid, e.artifact_digest, deleted=what, artifact_name=e.artifact_name)
                self.experts.remove(cid, e.artifact_digest)
                out.deleted.append(f"expert:{e.artifact_digest}")
                with self._cache_lock:
                    self._expert_cache.pop((cid, e.artifact_digest), None)
                    if drop_connectors:
                        self._models.pop(e.schema_digest, None)
                if drop_connectors and self.connectors.delete(base_id, e.schema_digest):
                    out.deleted.append(f"connectors:{e.schema_digest}")
                self.forgets.done(cid, e.artifact_digest)
                out.receipts.append(receipt_message(entry.receipt))
                doomed.discard((cid, e.artifact_digest))
        return out


def _receipt_predicate(envelope: dict[str, Any]) -> dict[str, Any]:
    import json

    from protocol.dsse import Envelope

    return json.loads(Envelope.from_dict(envelope).payload).get("predicate", {})


def _safe_model_dir(model_id: str) -> str:
    import re

    return re.sub(r"[^A-Za-z0-9._@-]+", "_", model_id)[:120]


class _CaptureHandlers:
    """Stands in for a server to read the method handlers the generated registration builds."""

    handlers: dict[str, Any] | None = None

    def add_generic_rpc_handlers(self, handlers: Any) -> None:
        pass

    def add_registered_method_handlers(self, service: str, handlers: dict[str, Any]) -> None:
        self.handlers = dict(handlers)


def _add_provider_servicer(servicer: ProviderServicer, server: grpc.Server) -> None:
    """`add_ProviderServiceServicer_to_server`, except that UploadExpert's requests are parsed by
    `protocol.wire.parse_upload_request`: a chunk's data stays a view of the received message instead of
    being copied out of it (the same messages on the wire; the header still goes through protobuf)."""
    cap = _CaptureHandlers()
    provider_pb2_grpc.add_ProviderServiceServicer_to_server(servicer, cap)
    if not cap.handlers or "UploadExpert" not in cap.handlers:  # another generated layout: the plain registration
        provider_pb2_grpc.add_ProviderServiceServicer_to_server(servicer, server)
        return
    handlers = cap.handlers
    handlers["UploadExpert"] = grpc.stream_unary_rpc_method_handler(
        servicer.UploadExpert, request_deserializer=parse_upload_request, response_serializer=provider_pb2.UploadResponse.SerializeToString)
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE_NAME, handlers),))
    server.add_registered_method_handlers(SERVICE_NAME, handlers)


class ProviderServer:
    """The provider's gRPC server: ProviderService plus gRPC health checking, on mutual TLS by default."""

    def __init__(self, config: ProviderConfig):
        self.config = config
        self.servicer = ProviderServicer(config)
        lim = config.limits
        self.server = grpc.server(ThreadPoolExecutor(max_workers=lim.max_workers, thread_name_prefix="llamdex-provider"),
                                  options=[("grpc.max_receive_message_length", lim.max_message_bytes),
                                           ("grpc.max_send_message_length", lim.max_message_bytes)])
        _add_provider_servicer(self.servicer, self.server)
        self.health = health.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.server)
        self.port = add_port(self.server, config.listen, config.tls, plaintext=config.plaintext)
        host = config.listen.rsplit(":", 1)[0]
        self.address = f"{host}:{self.port}"

    def start(self) -> "ProviderServer":
        self.server.start()
        if self.config.preload:
            self.servicer.preload()
        announce_serving(self.health, SERVICE_NAME, self.address, self.config.port_file)
        log.info("provider %s serving on %s (%s)", self.config.provider_id, self.address, "plaintext" if self.config.plaintext else "mutual TLS")
        return self

    def stop(self, grace: float = 2.0) -> None:
        self.health.enter_graceful_shutdown()
        self.server.stop(grace).wait(grace + 1)
        self.servicer.jobs.stop()

    def wait(self) -> None:
        self.server.wait_for_termination()


def serve_forever(server: Any) -> None:
    """Runs until SIGINT/SIGTERM, then stops gracefully."""
    done = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: done.set())
    while not done.wait(0.5):
        pass
    server.stop()


__all__ = ["ProviderServer", "ProviderServicer", "SERVICE_NAME", "serve_forever"]
