"""The provider's logic, independent of gRPC: `ProviderParty`.

One object holds the provider's state (ledger, uploads, expert store, connector store, jobs) and
does what each call asks: it takes already-authenticated clients and plain values, and returns
plain records. The gRPC servicer (`servicer.py`) only translates messages, and the Flower
orchestrator (`simulations/flower`) calls the same object, so every path verifies, ledgers and
receipts an expert with the same code. Every refusal is a `CodedError` with the rule it enforces.
"""

from __future__ import annotations

import json
import logging
import math
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable

from protocol.errors import LedgerError
from protocol.keys import load_private_key
from protocol.request_auth import UPLOAD_METHOD, upload_body
from protocol.rpc_errors import RpcError
from protocol.schema import PublicSchema
from protocol.toml_config import ConfigError
from provider_party.model.batching import MixedBatcher
from provider_party.model.connector_store import ConnectorStore
from provider_party.model.llamdex_model import LlamdexModel, RowAnswer, TenantQuery, answer_mixed
from provider_party.service.admission import InteractiveFirst, cancelled_after
from provider_party.service.auth import Authenticator, apply_configured_revocations, load_key_list
from provider_party.service.config import ProviderConfig, RegisteredClient
from provider_party.service.experts import ExpertStore, ForgetJournal, StoredExpert
from provider_party.service.jobs import Job, JobManager, JobStore
from provider_party.service.ledger import Ledger, LedgerEntry
from provider_party.service.state_lock import hold_state_lock
from provider_party.service.uploads import FinalizedUpload, UploadManager, UploadRecord, charged_by_this_upload

log = logging.getLogger(__name__)
EXPERT_CACHE = 32
WARM_UP_QUESTION = "A warm-up question before the first call: what is the answer for this record?"


@dataclass
class AskResult:
    """Answers of one Ask: per question the LLM's class probabilities, the expert's, and optionally the base LLM's."""

    schema: PublicSchema
    artifact_digest: str
    answers: list[RowAnswer]
    base: list[RowAnswer] | None
    seconds: float


@dataclass
class WarmUp:
    """What `ProviderParty.warm_up` loaded and how long each part took."""

    base_s: float = 0.0
    experts: int = 0
    schemas: int = 0
    connectors_s: float = 0.0
    forward_s: float = 0.0


@dataclass
class UploadOutcome:
    """Where one upload stream left an upload: complete (verified, ledgered, receipted) or waiting for a resume."""

    record: UploadRecord
    complete: bool
    received_bytes: int
    checks: list[str] = field(default_factory=list)
    verify_seconds: float = 0.0


@dataclass
class ForgetResult:
    deleted: list[str] = field(default_factory=list)
    receipts: list[dict] = field(default_factory=list)


@dataclass
class CustomizeResult:
    job: Job
    schema: PublicSchema
    connectors_reused: bool
    base_model_id: str


class ProviderParty:
    """The provider: verifies and ledgers uploads, trains connectors per schema, answers questions for every tenant."""

    def __init__(self, config: ProviderConfig, *, on_job_done: Callable[[Job], None] | None = None):
        self.config = config
        self.connectors = ConnectorStore(config.connectors)
        self.connectors.check_writable()   # before the state is opened: a refused start leaves none
        self.key = load_private_key(config.key)   # a key that is a folder or readable by others: refused before the state too
        self.receipt_key_list = load_key_list(config.receipt_keys, self.key)
        state = Path(config.state)
        if state.exists() and not state.is_dir():
            raise NotADirectoryError(20, "the state folder is a file, not a folder", str(state))
        state.mkdir(parents=True, exist_ok=True)
        hold_state_lock(state)   # before recovery: a second process would recover the first's live uploads and jobs
        self.ledger = Ledger(state / "ledger.db", signing_key=self.key,
                             endorsement=self.receipt_key_list.endorsement_for(self.key) if self.receipt_key_list else None,
                             trusted_keys=[k.public_key for k in self.receipt_key_list.keys] if self.receipt_key_list else None)
        self.auth = Authenticator(config, state / "state.db")
        self.uploads = UploadManager(state / "uploads", state / "state.db", config.limits, self._receipt_for_upload)
        self.experts = ExpertStore(state / "experts")
        self.forgets = ForgetJournal(state / "state.db")
        self.ledger_lock = threading.Lock()
        self._base = None
        self._base_lock = threading.Lock()
        self._models: dict[str, LlamdexModel] = {}
        self._expert_cache: "OrderedDict[tuple[str, str], tuple[Any, PublicSchema]]" = OrderedDict()
        self._cache_lock = threading.Lock()
        self.batcher = MixedBatcher(config.limits.batching())   # concurrent Asks of any clients and schemas share passes
        self.interactive = InteractiveFirst(config.limits.background_wait_s)   # upload verification yields to Ask passes
        self.recovery = self._recover()
        self.budget_changes = self._apply_configured_budgets()
        self.auth.revocations = apply_configured_revocations(config, self.ledger)
        self.jobs = JobManager(self._run_job, config.limits.max_job_queue, on_done=on_job_done, store=JobStore(state / "state.db"),
                               max_per_client=config.limits.max_jobs_per_client)
        self.recovery["jobs_failed"] = self.jobs.interrupted
        if self.jobs.interrupted:
            log.warning("%d connector job(s) were cut off by the last stop; recorded as FAILED", self.jobs.interrupted)

    # --- start-up recovery -----------------------------------------------------------------------------
    def client_entries(self, client_id: str) -> list[LedgerEntry]:
        out, token = [], None
        while True:
            page, token = self.ledger.entries(client_id=client_id, page_token=token, page_size=1000)
            out += page
            if not token:
                return out

    def _last_kind(self, client_id: str, digest: str) -> str | None:
        kinds = [e.kind for e in self.client_entries(client_id) if e.artifact_digest == digest]
        return kinds[-1] if kinds else None

    def _receipt_for_upload(self, client_id: str, upload_id: str) -> tuple[str, dict] | None:
        """(artifact digest, receipt) when the ledger charged `upload_id`, else None. A copy still staged with that
        charge (making it visible failed with an error the process survived, and nobody retried) is made visible
        here, as a restart would, so that expiring the upload's row cannot leave a charged expert unserved."""
        for e in self.experts.live(client_id):
            entry = charged_by_this_upload(self.ledger, e, upload_id)
            if entry is not None:
                return e.artifact_digest, entry.receipt
        with self.ledger_lock:
            for e in self.experts.staged_of(client_id):
                entry = charged_by_this_upload(self.ledger, e, upload_id, same_receipt=True)
                if entry is not None:
                    self.experts.promote(client_id, e.artifact_digest)
                    log.warning("upload %s of %s: its charged expert %s was still staged; made visible", upload_id, client_id, e.artifact_digest)
                    return e.artifact_digest, entry.receipt
        return None

    def _recover(self) -> dict[str, Any]:
        problems = self.ledger.verify_chain()
        if problems:   # a verification failure (exit status 5), not a crash: the provider refuses to serve on an altered ledger
            raise LedgerError("LEDGER_CORRUPT", f"the ledger at {self.ledger.path} does not verify, so the provider will not serve on it: "
                              + "; ".join(p.reason if p.seq is None else f"seq {p.seq}: {p.reason}" for p in problems[:5])
                              + (f" (and {len(problems) - 5} more)" if len(problems) > 5 else ""), file=str(self.ledger.path),
                              rule="ledger hash chain")
        counts = self.experts.reconcile(self._last_kind)
        counts.update(self._finish_forgets())
        counts.update(self.uploads.recover())
        if any(counts.values()):
            log.warning("recovered after an unclean stop: %s", counts)
        return counts

    def _apply_configured_budgets(self) -> list[str]:
        """The configuration is where an operator sets budgets, but a dataset's budget enters the ledger at
        its first upload; a later change of `[[clients]]` budgets is applied here, at start, so that it
        does not go unnoticed. A budget below what a dataset already spent refuses the start, before any
        budget changes: applying it would leave the ledger over budget (which `llamdex audit` fails), and
        keeping the old, looser one (as before) went on charging a budget the operator had lowered.
        A change shows in the next receipt's `budget`."""
        configured = [(c.client_id, b, *c.budget_for(b.dataset_id)) for c in self.config.clients for b in self.ledger.budgets(c.client_id)]
        below = [f"client {cid!r} dataset {b.dataset_id!r}: ε {eps:g}, δ {delta:g} is below the ε {_up(b.epsilon_spent)}, δ "
                 f"{_up(b.delta_spent)} already spent" for cid, b, eps, delta in configured if b.epsilon_spent > eps or b.delta_spent > delta]
        if below:
            raise ConfigError("BAD_CONFIG", f"[[clients]] budgets below what the ledger has spent ({'; '.join(below)}): a spent budget cannot be "
                              "taken back; set each to at least what is spent (exactly that stops the dataset's uploads)")
        changes = []
        for cid, b, eps, delta in configured:
            if (eps, delta) == (b.epsilon_budget, b.delta_budget):
                continue
            what = f"budget of client {cid!r} dataset {b.dataset_id!r}: ε {b.epsilon_budget:g} → {eps:g}, δ {b.delta_budget:g} → {delta:g}"
            self.ledger.set_budget(cid, b.dataset_id, eps, delta)   # never below the spend: refused above
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
            for e in self.client_entries(cid):
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
            from provider_party.model.base_llm import EMBEDDED_NAME, embedded_cache_dir

            try:
                return f"{EMBEDDED_NAME}@{embedded_cache_dir().name.rsplit('-', 1)[-1]}"
            except FileNotFoundError:
                return "embedded"
        return self.config.base_model

    def ensure_base(self) -> Any:
        with self._base_lock:
            if self._base is None:
                from provider_party.model.base_llm import load_base_llm

                t = time.perf_counter()
                self._base = load_base_llm(self.config.base_model, device=self.config.device)
                log.info("base LLM %s loaded on %s in %.1f s", self._base.model_id, self._base.device, time.perf_counter() - t)
            return self._base

    def preload(self) -> threading.Thread:
        """Loads the base LLM in the background (the Flower orchestrator, while its clients train); the
        gRPC server uses `warm_up`, which readiness waits for."""
        th = threading.Thread(target=self.ensure_base, name="llamdex-base-preload", daemon=True)
        th.start()
        return th

    def warm_up(self) -> WarmUp:
        """Loads what the first calls will need, so that readiness means ready: the base LLM, the connectors
        of every schema a live expert of a registered client uses, those experts (verified again, as
        `expert_for` always does; the newest `EXPERT_CACHE`), and one forward pass per schema (torch's first
        pass allocates what later ones reuse). An expert that cannot be loaded is logged and skipped: it
        is refused again, with its reason, when a call names it."""
        w = WarmUp()
        t = time.perf_counter()
        self.ensure_base()
        w.base_s = time.perf_counter() - t
        ready: dict[str, TenantQuery] = {}
        for stored in self.experts.live()[-EXPERT_CACHE:]:
            client = self.config.client(stored.client_id)
            if client is None:
                continue
            try:
                expert, schema = self.expert_for(client, stored)
                w.experts += 1
                t = time.perf_counter()
                model = self.model_for(schema)
                w.connectors_s += time.perf_counter() - t
            except RpcError as e:        # e.g. NOT_CUSTOMIZED: uploaded, never customized
                log.debug("warm-up: expert %s of %s: %s", stored.artifact_digest[:19], stored.client_id, e)
                continue
            except Exception as e:  # noqa: BLE001 - one broken expert must not keep the provider from serving
                log.warning("warm-up: expert %s of %s not loaded: %s: %s", stored.artifact_digest[:19], stored.client_id, type(e).__name__, e)
                continue
            ready.setdefault(schema.digest, TenantQuery(WARM_UP_QUESTION, model, expert))
        w.schemas = len(ready)
        t = time.perf_counter()
        for q in ready.values():
            answer_mixed([q])
        w.forward_s = time.perf_counter() - t
        return w

    def schemas_ready(self) -> list[str]:
        """Digests of the schemas whose connectors can serve now. Once the base LLM is loaded (at warm-up, by
        default) a set trained on another question format is left out, as Ask would refuse it; before that,
        every stored set is listed, because checking needs the tokenizer and Hello must stay cheap."""
        return self.connectors.ready_schemas(self.base_model_id(), self._base)

    def preset(self, name: str) -> Any:
        from provider_party.model.connector_training import PRESETS, Preset

        if not name:
            p = self.config.preset
            return p if isinstance(p, Preset) else PRESETS[p]
        if name not in PRESETS:
            raise RpcError("BAD_REQUEST", f"preset {name!r} is not one of {sorted(PRESETS)}", rule="preset")
        return PRESETS[name]

    def model_for(self, schema: PublicSchema) -> LlamdexModel:
        with self._cache_lock:
            m = self._models.get(schema.digest)
        if m is not None:
            return m
        base = self.ensure_base()
        why = self.connectors.unusable(base, schema)
        if why is not None:
            raise RpcError("NOT_CUSTOMIZED", f"no usable connectors for schema {schema.digest[:19]}… on {base.model_id}: {why}; call "
                           "Customize and wait for its job (WatchJob) first", rule="customize before asking")
        m = self.connectors.load(base, schema)
        with self._cache_lock:
            self._models[schema.digest] = m
        return m

    def expert_for(self, client: RegisteredClient, stored: StoredExpert) -> tuple[Any, PublicSchema]:
        """(expert module, schema): the stored artifact is verified again, then tensors load via safetensors."""
        from protocol.expert_spec import load_expert_state

        key = (client.client_id, stored.artifact_digest)
        with self._cache_lock:
            hit = self._expert_cache.get(key)
            if hit is not None:
                self._expert_cache.move_to_end(key)
                return hit
        verified = self.experts.verify(stored, client.public_key)
        expert = load_expert_state(verified.spec, verified.load_tensors()).to(self.ensure_base().device)  # moved once, at load
        with self._cache_lock:
            self._expert_cache[key] = (expert, verified.schema)
            while len(self._expert_cache) > self.config.limits.max_resident_experts:
                self._expert_cache.popitem(last=False)
        return expert, verified.schema

    def live_expert(self, client: RegisteredClient, digest: str = "") -> StoredExpert:
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
        model, trained_now = self.connectors.get_or_train(base, schema, self.preset(job.preset), seed=0, progress=False,
                                                          retrain=job.retrain, on_progress=progress)
        with self.ledger_lock:   # Forget holds it: either Forget sees these connectors, or this sees Forget's deletion
            if trained_now and not any(e.schema_digest == schema.digest for e in self.experts.live()):
                self.connectors.delete(self.base_model_id(), schema.digest)
                raise RpcError("EXPERT_NOT_FOUND", "every expert of this schema was forgotten while its connectors trained; the connectors "
                               "were deleted too, as Forget promises", rule="forget removes unused connectors")
            with self._cache_lock:
                self._models[schema.digest] = model
        return (not trained_now), dict(model.config.metrics or {})

    # --- calls ------------------------------------------------------------------------------------------
    def receive_upload(self, client: RegisteredClient, header: Any, chunks: Iterable[Any], *, stop: Callable[[], None] | None = None,
                       stream_errors: tuple[type[BaseException], ...] = (), cancel: Callable[[], None] | None = None) -> UploadOutcome:
        """One upload stream, whatever carries it (the gRPC servicer, the Flower orchestrator): the signed
        `UploadHeader`, then `UploadRequest` messages each holding one `UploadChunk`.

        The header's fields, its signature by the client's registered key and its fresh nonce are checked
        and the upload row is committed before any chunk is used; each chunk's place and digest are checked
        before it is stored; a complete upload is finalized (`finalize_upload`: verification, ε recomputed,
        budget charged, signed receipt). `stop` releases the chunk source whatever happens (the servicer's
        read-ahead); an error in `stream_errors` means the sender went away: what arrived is kept for a resume.
        `cancel` cuts the stream after `max_upload_stream_s` (what arrived is kept), so a stream never holds
        a server thread for ever.
        """
        uploads = self.uploads
        try:
            uploads.validate_header(header)
            self.auth.check_signed(client, UPLOAD_METHOD, header.auth if header.HasField("auth") else None, upload_body(header))
            opened = uploads.open(client, header)
        except BaseException:
            if stop is not None:
                stop()   # nothing received for a refused header is used
            raise
        if isinstance(opened, UploadRecord):  # already complete: the same answer again, nothing charged
            if stop is not None:
                stop()
            return UploadOutcome(opened, True, opened.total_bytes)
        try:
            return self._receive_and_finalize(client, header, opened, chunks, stop, stream_errors, cancel)
        finally:
            uploads.end_stream(client.client_id)

    @staticmethod
    def _receive_chunks(session: Any, chunks: Iterable[Any], lim: Any) -> None:
        for msg in chunks:
            if msg.WhichOneof("part") != "chunk":
                raise RpcError("BAD_REQUEST", "only UploadChunk messages may follow the header", rule="one header")
            c = msg.chunk
            alg = c.WhichOneof("digest")
            if alg is None:
                raise RpcError("BAD_REQUEST", f"chunk at offset {c.offset} carries no digest; set blake3 or sha256", rule="chunk digest")
            session.write(c.offset, c.data, getattr(c, alg), lim.max_chunk_bytes, alg)

    def _receive_and_finalize(self, client: RegisteredClient, header: Any, opened: Any, chunks: Iterable[Any], stop: Callable[[], None] | None,
                              stream_errors: tuple[type[BaseException], ...], cancel: Callable[[], None] | None) -> UploadOutcome:
        uploads, lim = self.uploads, self.config.limits
        session, cut = opened, False
        try:
            with cancelled_after(lim.max_upload_stream_s, cancel):
                self._receive_chunks(session, chunks, lim)
        except stream_errors:
            cut = True  # the sender went away; what arrived is kept for a resume
        finally:
            if stop is not None:
                stop()
            session.close()
            if session.received < session.record.total_bytes:
                uploads.touch(header.upload_id)   # unfinished: its TTL counts from the last byte (a complete one is finalized now)
        rec = session.record
        if cut or session.received < rec.total_bytes:
            return UploadOutcome(rec, False, session.received)
        fin = self.finalize_upload(rec, client)
        return UploadOutcome(fin.record, True, fin.record.total_bytes, fin.checks, fin.verify_seconds)

    def finalize_upload(self, record: UploadRecord, client: RegisteredClient) -> FinalizedUpload:
        """Verifies a completely received upload, recomputes ε, charges the budget and signs the receipt."""
        self.interactive.background_turn()
        fin = self.uploads.finalize(record, client, self.ledger, self.experts, self.ledger_lock)
        log.info("upload %s from %s accepted: %d bytes, artifact %s, receipt %s; finalize %.3f s wall, %.3f s CPU", record.upload_id,
                 client.client_id, record.total_bytes, fin.record.artifact_digest, fin.entry.receipt_id, fin.verify_seconds, fin.verify_cpu_seconds)
        return fin

    def customize(self, client: RegisteredClient, artifact_digest: str = "", preset: str = "", retrain: bool = False) -> CustomizeResult:
        """Starts (or joins) the connector job for the schema of the client's live expert."""
        stored = self.live_expert(client, artifact_digest)
        if retrain and not self.config.allow_retrain:
            raise RpcError("POLICY_REFUSED", "this provider does not retrain existing connectors on request", rule="allow_retrain")
        self.preset(preset)  # refuses an unknown preset before a job exists
        schema = PublicSchema.load(stored.artifact_dir / "schema.json")  # verified at upload
        job = self.jobs.submit(client.client_id, schema.digest, self.base_model_id(), preset or "", bool(retrain), schema)
        reused = self._base is not None and self.connectors.has(self._base, schema) and not retrain
        return CustomizeResult(job, schema, reused, self.base_model_id())

    def check_questions(self, questions: list[str]) -> None:
        lim = self.config.limits
        if not 1 <= len(questions) <= lim.max_batch_questions:
            raise RpcError("BAD_REQUEST", f"Ask takes 1..{lim.max_batch_questions} questions, got {len(questions)}", rule="max_batch_questions")
        for i, q in enumerate(questions):
            if not q.strip() or len(q) > lim.max_question_chars:
                raise RpcError("BAD_REQUEST", f"question {i} must be 1..{lim.max_question_chars} characters (got {len(q)})", rule="max_question_chars")

    def check_question_tokens(self, questions: list[str]) -> None:
        """Each question within `max_question_tokens` of the base LLM's tokenizer: the character limit alone let a question
        of 4-byte letters cost twelve times the tokens of ordinary text."""
        limit = self.config.limits.max_question_tokens
        tokenizer = self.ensure_base().tokenizer
        for i, q in enumerate(questions):
            n = len(tokenizer(q, add_special_tokens=False)["input_ids"])
            if n > limit:
                raise RpcError("BAD_REQUEST", f"question {i} is {n} tokens of the base LLM; the limit is {limit} (max_question_tokens): "
                               "shorten it", rule="max_question_tokens")

    def tenant_queries(self, client: RegisteredClient, questions: list[str], artifact_digest: str = "") -> tuple[list[TenantQuery], StoredExpert]:
        """The rows a client's questions add to a (possibly mixed) batch: its schema's connectors and its verified expert."""
        self.check_questions(questions)
        self.check_question_tokens(questions)
        stored = self.live_expert(client, artifact_digest)
        expert, schema = self.expert_for(client, stored)
        model = self.model_for(schema)
        return [TenantQuery(q, model, expert) for q in questions], stored

    def ask(self, client: RegisteredClient, questions: list[str], artifact_digest: str = "", include_base: bool = False,
            deadline_s: float | None = None) -> AskResult:
        """Answers the client's questions (and, if asked, the same questions to the base LLM alone) in a forward pass
        that concurrent Asks of other clients and schemas may share (`MixedBatcher`); `seconds` includes the wait."""
        with self.interactive.foreground():   # uploads' verification waits meanwhile (InteractiveFirst)
            queries, stored = self.tenant_queries(client, questions, artifact_digest)
            rows = queries + ([TenantQuery(q.question, q.model, None) for q in queries] if include_base else [])
            t = time.perf_counter()
            answers = self.batcher.answer(rows, deadline_s)
            seconds = time.perf_counter() - t
        n = len(queries)
        return AskResult(queries[0].model.schema, stored.artifact_digest, answers[:n], answers[n:] if include_base else None, seconds)

    def ledger_page(self, client: RegisteredClient, page_token: str | None, page_size: int) -> tuple[list[LedgerEntry], str | None]:
        size = page_size or 100
        if not 1 <= size <= min(self.config.limits.max_page_size, 1000):
            raise RpcError("BAD_PAGE_SIZE", f"page_size must be in 1..{self.config.limits.max_page_size}, got {page_size}", rule="max_page_size")
        return self.ledger.entries(client_id=client.client_id, page_token=page_token or None, page_size=size)

    def forget(self, client: RegisteredClient, artifact_digest: str = "") -> ForgetResult:
        """Deletes the client's expert(s), and a schema's connectors when no other live expert uses them, under a signed receipt."""
        cid = client.client_id
        with self.ledger_lock:
            targets = self.experts.live(cid)
            if artifact_digest:
                targets = [e for e in targets if e.artifact_digest == artifact_digest]
            if not targets:
                raise RpcError("NOTHING_TO_FORGET", f"client {cid!r} has no live expert {artifact_digest or ''}".rstrip(), rule="own live experts")
            out = ForgetResult()
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
                out.receipts.append(entry.receipt)
                doomed.discard((cid, e.artifact_digest))
        return out

    def revoke_client_key(self, client_id: str, key_fingerprint: str, reason: str) -> Any:
        """Revokes a client signing key now (a signed ledger event); the client's calls are refused from the next one on."""
        rev = self.ledger.revoke_client_key(client_id, key_fingerprint, reason)
        self.auth.revocations = self.ledger.revocations()
        return rev

    def close(self) -> bool:
        """Drains the question batcher and stops the connector job worker; False when that worker is still inside a job
        (the caller must then leave with os._exit: see `JobManager.stop`)."""
        self.batcher.close(drain=True, timeout_s=self.config.limits.ask_deadline_s)
        stopped = self.jobs.stop()
        if not stopped:
            log.warning("the connector job worker did not stop within a minute; it is recorded FAILED at the next start")
        return stopped


def _up(x: float) -> str:
    """A spent amount rounded up to 6 significant digits: a budget set to the printed figure is never below it."""
    if not math.isfinite(x) or x == 0:
        return f"{x:g}"
    scale = 10.0 ** (math.floor(math.log10(abs(x))) - 5)
    return f"{math.ceil(x / scale - 1e-9) * scale:.6g}"


def _receipt_predicate(envelope: dict[str, Any]) -> dict[str, Any]:
    from protocol.dsse import Envelope

    return json.loads(Envelope.from_dict(envelope).payload).get("predicate", {})


__all__ = ["AskResult", "CustomizeResult", "ForgetResult", "ProviderParty", "UploadOutcome", "WarmUp"]
