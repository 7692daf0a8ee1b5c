"""The data owner's side: train, sign and hand over experts, follow customization, evaluate, keep receipts.

`ClientParty` does the work (the CLI verbs use it directly); `ClientServicer` exposes it as
`llamdex.v1.ClientService`, so the provider or an orchestrator can *ask* the client to train and hand
over an expert under a stated DP budget, and deliver receipts and job results. The client decides:
a request above its own `max_epsilon`, for a dataset it does not offer, or from a caller it does
not allow is refused. The private table never leaves this process; what leaves is the signed
artifact (expert weights, spec, public schema, DP statement) and the questions of `Evaluate`.
"""

from __future__ import annotations

import json
import logging
import math
import os
import secrets
import shutil
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import grpc
from grpc_health.v1 import health, health_pb2_grpc

from client_party.config import ClientConfig
from protocol.keys import fingerprint
from protocol.request_guard import MalformedRequestInterceptor
from protocol.rpc.llamdex.v1 import client_pb2, client_pb2_grpc, common_pb2
from protocol.crashpoints import crashpoint
from protocol.rpc_errors import RpcError, error_code, guard, guard_stream
from protocol.serving import EXCLUSIVE_PORT, announce_serving, check_port_file
from protocol.tls import add_port, peer_identity
from protocol.wire import JOB_STATE_NAMES, check_job_id, check_wire_name, receipt_envelope, receipt_message

log = logging.getLogger(__name__)
SERVICE_NAME = "llamdex.v1.ClientService"
PARTIAL_PREFIX = ".partial-"   # an artifact being written and signed; removed at start if a crash cut it off


@dataclass
class TrainedArtifact:
    folder: Path
    artifact_digest: str
    dataset_id: str
    seed: int
    dp: Any
    heldout_accuracy: float
    n_train: int
    n_test: int
    seconds: float


class ClientParty:
    """The client's work, shared by the CLI and the ClientService."""

    def __init__(self, config: ClientConfig):
        self.config = config
        self.workspace = Path(config.workspace)
        self.key = config.signing_key()          # both refuse a bad configuration before any folder is made
        self.store = config.receipt_store()
        (self.workspace / "artifacts").mkdir(parents=True, exist_ok=True)
        (self.workspace / "jobs").mkdir(parents=True, exist_ok=True)
        self._provider = None
        self._lock = threading.Lock()
        for partial in (self.workspace / "artifacts").glob(f"{PARTIAL_PREFIX}*"):   # a training cut off before its artifact was signed
            log.warning("removing the unfinished artifact %s (its training was cut off)", partial)
            shutil.rmtree(partial, ignore_errors=True)

    @property
    def index_path(self) -> Path:
        return self.workspace / "artifacts.json"

    def index(self) -> dict[str, dict]:
        return json.loads(self.index_path.read_text()) if self.index_path.is_file() else {}

    def _remember(self, digest: str, info: dict) -> None:
        with self._lock:
            idx = self.index()
            idx[digest] = {**idx.get(digest, {}), **info}
            tmp = self.index_path.with_suffix(".tmp")
            tmp.write_text(json.dumps(idx, indent=2, sort_keys=True) + "\n")
            tmp.replace(self.index_path)

    def provider(self) -> Any:
        with self._lock:
            if self._provider is None:
                self._provider = self.config.provider_client()
            return self._provider

    def latest(self, digest: str = "") -> tuple[str, dict]:
        idx = self.index()
        if digest:
            if digest not in idx:
                raise RpcError("EXPERT_NOT_FOUND", f"this client has no artifact {digest}", rule="own artifacts")
            return digest, idx[digest]
        uploaded = sorted(((v.get("uploaded_at", ""), k) for k, v in idx.items() if v.get("uploaded_at")))
        if not uploaded:
            raise RpcError("EXPERT_NOT_FOUND", "no expert of this client was uploaded yet; train and upload one first", rule="upload first")
        d = uploaded[-1][1]
        return d, idx[d]

    # --- train -------------------------------------------------------------------------------------------
    def check_policy(self, dataset_id: str, max_epsilon: float | None) -> None:
        offered = self.config.offered_datasets
        if dataset_id not in offered:
            raise RpcError("UNKNOWN_DATASET", f"this client offers datasets {list(offered)}, not {dataset_id!r}", rule="offered datasets")
        if max_epsilon is None or not (math.isfinite(max_epsilon) and max_epsilon > 0):
            raise RpcError("POLICY_REFUSED", f"an expert is handed over only under a finite DP budget (max_epsilon > 0), got {max_epsilon!r}",
                           rule="DP required")
        if max_epsilon > self.config.max_epsilon:
            raise RpcError("POLICY_REFUSED", f"max_epsilon {max_epsilon:g} exceeds this client's policy of {self.config.max_epsilon:g} per expert",
                           rule="client max_epsilon")

    def train(self, dataset_id: Any, epsilon: float | None, *, delta: float | None = None, epochs: int | None = None, seed: int = 0,
              progress: bool = False) -> TrainedArtifact:
        """Trains (DP-SGD when `epsilon` is given) on the training split, writes and signs the artifact.
        `dataset_id`: a registered table's name, or a `TableRef` (a CSV/Parquet file with its schema)."""
        from dataclasses import replace

        from client_party.datasets import TableRef, encode_table, split_table
        from client_party.expert_training import TrainConfig, predict_proba, train_expert
        from protocol.artifact import write_artifact

        t0 = time.perf_counter()
        if isinstance(dataset_id, TableRef):
            ref, dataset_id = dataset_id, dataset_id.id
        elif dataset_id in self.config.tables:        # an own table of the client config's [tables]
            ref = self.config.tables[dataset_id]
        else:                                         # a registered table's name, or a file
            ref = TableRef.parse(dataset_id)
            dataset_id = ref.id
        df, schema = ref.load()
        train, test = split_table(df, schema, test_size=0.2, seed=seed)
        cfg = TrainConfig(seed=seed) if epsilon is None else TrainConfig.private(epsilon, seed=seed, target_delta=delta)
        if epochs:
            cfg = replace(cfg, epochs=epochs)
        x, y = encode_table(train, schema)
        trained = train_expert(x, y, schema, cfg, progress=progress)
        xt, yt = encode_table(test, schema)
        acc = float((predict_proba(trained.model, xt).argmax(1) == yt).mean())
        name = f"{self.config.client_id}-{dataset_id}-{time.strftime('%Y%m%dT%H%M%S')}-{int(time.time() * 1000) % 1000:03d}"
        folder = self.workspace / "artifacts" / name
        partial = folder.with_name(PARTIAL_PREFIX + name)      # an artifact appears under its name complete and signed, or not at all
        write_artifact(partial, trained.model, schema, trained.dp, self.key, model_name=name)
        from protocol.artifact import ArtifactVerifier

        digest = ArtifactVerifier([self.key.public_key()]).verify(partial).digest  # what the provider will name it
        crashpoint("client.artifact_written")
        os.replace(partial, folder)
        self._remember(digest, {"folder": str(folder), "dataset_id": dataset_id, "table": _table_text(ref), "seed": seed, "epsilon": trained.dp.epsilon if trained.dp.is_private else None,
                                "heldout_accuracy": acc, "n_train": len(train), "n_test": len(test)})
        return TrainedArtifact(folder, digest, dataset_id, seed, trained.dp, acc, len(train), len(test), time.perf_counter() - t0)

    def upload(self, folder: Path, dataset_id: str, seed: int | None = None) -> Any:
        """Uploads an artifact under an upload id noted in the index *before* the first byte is sent, so that an
        upload cut off by a crash is resumed (or, if the provider finished it, answered with the same receipt)
        under the same id: never charged twice."""
        from protocol.artifact import ArtifactVerifier

        digest = ArtifactVerifier([self.key.public_key()]).verify(folder).digest
        check_wire_name(dataset_id, "dataset_id")   # refused before anything is recorded
        provider = self.provider()   # a transport the client refuses (plaintext to another host) leaves no pending upload behind
        pending = self.index().get(digest, {}).get("pending_upload_id")
        upload_id = pending or secrets.token_urlsafe(24)
        self._remember(digest, {"folder": str(folder), "dataset_id": dataset_id, "pending_upload_id": upload_id})
        try:
            result = provider.upload(folder, dataset_id, artifact_name=_artifact_name(dataset_id), chunk_bytes=self.config.chunk_bytes,
                                            upload_id=upload_id, resume=pending is not None)
        except grpc.RpcError as e:
            if error_code(e) == "UPLOAD_FAILED":   # that id is spent (the provider refused its bytes): the next try starts afresh
                self._remember(digest, {"pending_upload_id": None})
            raise
        info = {"folder": str(folder), "dataset_id": dataset_id, "uploaded_at": time.strftime("%Y-%m-%dT%H:%M:%S"),
                "receipt_id": result.receipt.receipt_id, "upload_id": result.upload_id, "pending_upload_id": None}
        if seed is not None:
            info["seed"] = seed
        self._remember(result.artifact_digest, info)
        return result

    def pending_uploads(self) -> list[tuple[str, dict]]:
        """Artifacts whose upload was started but not confirmed by a receipt (e.g. cut off by a crash)."""
        return [(d, v) for d, v in sorted(self.index().items()) if v.get("pending_upload_id") and not v.get("receipt_id")
                and Path(v.get("folder", "")).is_dir()]

    def resume_pending_uploads(self) -> list[Any]:
        """Finishes every pending upload under its noted upload id (the provider answers a finished one with its receipt)."""
        return [self.upload(Path(v["folder"]), v["dataset_id"], v.get("seed")) for _, v in self.pending_uploads()]

    # --- customize and evaluate -----------------------------------------------------------------------
    def customize(self, digest: str = "", preset: str = "") -> Iterator[Any]:
        """Asks the provider to customize for an expert and yields the job's events (JobEvent messages)."""
        digest, _ = self.latest(digest)
        pc = self.provider()
        job = pc.customize(digest, preset)
        last = None
        for ev in pc.watch_job(job.job_id):
            last = ev
            yield ev
        if last is not None and last.HasField("result"):
            self.save_job_result(last.result)

    def save_job_result(self, result: common_pb2.JobResult, source: str = "watched") -> Path:
        """Keeps a job result: `watched` (followed with WatchJob) or `delivered` (pushed by the provider)."""
        from google.protobuf.json_format import MessageToDict

        p = self.workspace / "jobs" / f"{check_job_id(result.job_id)}.{source}.json"   # a job id from the wire names a file
        p.write_text(json.dumps(MessageToDict(result, preserving_proto_field_name=True), indent=2, sort_keys=True) + "\n")
        return p

    def heldout_questions(self, info: dict, max_questions: int = 0) -> tuple[list[str], Any, Any, Any]:
        """The client's held-out records (the split it trained without) as questions, with labels and features."""
        from client_party.datasets import encode_table, split_table
        from protocol.verbalizer import Verbalizer

        table = info.get("table")
        if table:       # what `train` remembered; older indexes only name the dataset
            ref = _table_ref(table)
        else:
            ref = self.config.table(info["dataset_id"])
        df, schema = ref.load()
        _, test = split_table(df, schema, test_size=0.2, seed=int(info.get("seed", 0)))
        if max_questions and len(test) > max_questions:
            test = test.iloc[:max_questions]
        questions = Verbalizer(schema, seed=10_000 + int(info.get("seed", 0))).questions(test[schema.feature_names].to_dict("records"))
        x, y = encode_table(test, schema)
        return questions, x, y, schema

    def evaluate(self, digest: str = "", max_questions: int = 0, batch_size: int = 16, include_base: bool = True,
                 on_batch: Any = None) -> dict[str, Any]:
        """Asks the held-out questions through the provider's Ask and scores them here (labels never leave)."""
        for asked, total, result in self.evaluate_steps(digest, max_questions, batch_size, include_base):
            if result is not None:
                return result
            if on_batch is not None and asked:
                on_batch(asked, total)
        raise AssertionError("evaluate_steps ends with the result")

    def evaluate_steps(self, digest: str = "", max_questions: int = 0, batch_size: int = 16,
                       include_base: bool = True) -> Iterator[tuple[int, int, dict[str, Any] | None]]:
        """`evaluate` as it goes: (asked, total, None) before the first and after every Ask batch, then (total, total, scores)."""
        import numpy as np

        from client_party.expert_training import predict_proba
        from protocol.artifact import ArtifactVerifier
        from protocol.expert_spec import load_expert_state

        digest, info = self.latest(digest)
        questions, x, y, schema = self.heldout_questions(info, max_questions)
        pc = self.provider()
        size = batch_size or 16
        yield 0, len(questions), None
        t0 = time.perf_counter()
        answers, calls = [], 0
        for s in range(0, len(questions), size):
            answers += pc.ask(questions[s:s + size], artifact_digest=digest, include_base=include_base, batch_size=size)
            calls += 1
            yield len(answers), len(questions), None
        ask_s = time.perf_counter() - t0
        llamdex = np.array([a.class_index for a in answers])
        verified = ArtifactVerifier([self.key.public_key()]).verify(info["folder"])
        expert = load_expert_state(verified.spec, verified.load_tensors())
        expert_pred = predict_proba(expert, x).argmax(1)
        eps = verified.dp.epsilon if verified.dp.is_private else None
        rows = []
        if include_base:
            rows.append(_score_row("base_llm", None, y, np.array([int(np.argmax(a.base_probs)) for a in answers])))
        rows.append(_score_row("expert", eps, y, expert_pred))
        rows.append(_score_row("llamdex", eps, y, llamdex))
        rows.append(_score_row("majority_class", None, y, np.full_like(y, np.bincount(y).argmax())))
        yield len(questions), len(questions), {
            "dataset_id": info["dataset_id"], "artifact_digest": digest, "rows": rows, "ask_seconds": ask_s, "ask_calls": calls,
            "agreement_with_expert": float((llamdex == expert_pred).mean()), "n_test": int(len(y))}


def _table_text(ref: Any) -> dict[str, str]:
    """How the artifact index remembers the table, to rebuild its held-out split for `evaluate`: the same records
    need the same schema and the same policy for invalid ones (a dropped record shifts the split)."""
    out = {"name": ref.name} if ref.name is not None else {"path": str(Path(ref.path).resolve())}
    if ref.schema_path:
        out["schema"] = str(Path(ref.schema_path).resolve())
    if ref.on_invalid != "reject":
        out["on_invalid"] = ref.on_invalid
    return out


def _table_ref(table: dict[str, str]) -> Any:
    """The `TableRef` that `_table_text` wrote."""
    from client_party.datasets import TableRef

    return TableRef.parse(table.get("name") or table["path"], table.get("schema"), table.get("on_invalid", "reject"))


def _artifact_name(dataset_id: str) -> str:
    return f"expert-{dataset_id}"[:64]


def _score_row(method: str, eps: float | None, y: Any, pred: Any) -> dict[str, Any]:
    from sklearn.metrics import accuracy_score, balanced_accuracy_score, f1_score

    return {"method": method, "epsilon": eps, "accuracy": float(accuracy_score(y, pred)),
            "balanced_accuracy": float(balanced_accuracy_score(y, pred)), "macro_f1": float(f1_score(y, pred, average="macro")), "n_test": int(len(y))}


def format_scores(dataset: str, rows: list[dict[str, Any]]) -> str:
    lines = ["| dataset | method | ε | accuracy | balanced acc. | macro F1 | n_test |", "|---|---|---|---|---|---|---|"]
    for r in rows:
        eps = "–" if r.get("epsilon") is None else f"{r['epsilon']:.3g}"
        lines.append(f"| {dataset} | {r['method']} | {eps} | {r['accuracy']:.3f} | {r['balanced_accuracy']:.3f} | {r['macro_f1']:.3f} | {r['n_test']} |")
    return "\n".join(lines)


def _evaluate_response(ev: dict[str, Any]) -> client_pb2.EvaluateResponse:
    out = client_pb2.EvaluateResponse(dataset_id=ev["dataset_id"], ask_seconds=ev["ask_seconds"], ask_calls=ev["ask_calls"],
                                      agreement_with_expert=ev["agreement_with_expert"])
    for r in ev["rows"]:
        out.rows.add(method=r["method"], has_epsilon=r["epsilon"] is not None, epsilon=r["epsilon"] or 0.0, accuracy=r["accuracy"],
                     balanced_accuracy=r["balanced_accuracy"], macro_f1=r["macro_f1"], n_test=r["n_test"])
    return out


def _whole_number(name: str, value: int) -> None:
    """Counts and seeds of a request are 0 or more (a negative one failed deep inside training, or silently meant
    "all but the last N" held-out records)."""
    if value < 0:
        raise RpcError("BAD_REQUEST", f"{name} must be 0 or more, got {value}", rule=name)


def _evaluate_sizes(request: Any) -> None:
    _whole_number("max_questions", request.max_questions)   # 0: every held-out record
    _whole_number("batch_size", request.batch_size)         # 0: 16 per Ask


class ClientServicer(client_pb2_grpc.ClientServiceServicer):
    def __init__(self, party: ClientParty):
        self.party = party
        self.config = party.config

    def _caller(self, context: Any, allowed: tuple[str, ...] | None = None) -> str:
        who = peer_identity(context, plaintext=self.config.plaintext)
        if not who:
            raise RpcError("NO_IDENTITY", "the call carries no identity: connect with a certificate from the shared CA", rule="mutual TLS")
        allowed = allowed or self.config.allowed_callers
        if who not in allowed:
            raise RpcError("CALLER_NOT_ALLOWED", f"{who!r} may not call this client; allowed: {list(allowed)}", rule="allowed_callers")
        return who

    @guard
    def Hello(self, request, context):
        who = self._caller(context)
        return client_pb2.ClientHelloResponse(client_id=self.config.client_id, key_fingerprint=fingerprint(self.party.key),
                                              datasets=list(self.config.offered_datasets), max_epsilon=self.config.max_epsilon,
                                              provider_address=self.config.provider_address, caller=who)

    @guard
    def TrainExpert(self, request, context):
        self._caller(context)
        _whole_number("epochs", request.epochs)   # 0: the recipe's default
        _whole_number("seed", request.seed)
        self.party.check_policy(request.dataset_id, request.max_epsilon)
        art = self.party.train(request.dataset_id, request.max_epsilon, delta=request.delta or None, epochs=request.epochs or None, seed=request.seed)
        out = client_pb2.TrainExpertResponse(artifact_digest=art.artifact_digest, dp_statement_json=json.dumps(art.dp.to_dict(), sort_keys=True),
                                             artifact_bytes=sum(f.stat().st_size for f in art.folder.iterdir()),
                                             expert_heldout_accuracy=art.heldout_accuracy, n_train=art.n_train, n_test=art.n_test,
                                             train_seconds=art.seconds)
        if request.upload:
            t = time.perf_counter()
            res = self.party.upload(art.folder, art.dataset_id)
            out.receipt.CopyFrom(receipt_message(res.receipt_envelope))
            out.upload_seconds = time.perf_counter() - t
        return out

    @guard_stream
    def Customize(self, request, context):
        self._caller(context)
        yield from self.party.customize(request.artifact_digest, request.preset)

    @guard
    def Evaluate(self, request, context):
        self._caller(context)
        _evaluate_sizes(request)
        return _evaluate_response(self.party.evaluate(request.artifact_digest, request.max_questions, request.batch_size or 16,
                                                      request.include_base))

    @guard_stream
    def WatchEvaluate(self, request, context):
        self._caller(context)
        _evaluate_sizes(request)
        for asked, total, result in self.party.evaluate_steps(request.artifact_digest, request.max_questions, request.batch_size or 16,
                                                              request.include_base):
            event = client_pb2.EvaluateEvent(asked=asked, total=total)
            if result is not None:
                event.result.CopyFrom(_evaluate_response(result))
            yield event

    @guard
    def DeliverReceipt(self, request, context):
        self._caller(context)
        stored, r = self.party.store.add(receipt_envelope(request.receipt))
        return client_pb2.DeliverReceiptResponse(stored=stored, sequence=r.sequence)

    @guard
    def DeliverJobResult(self, request, context):
        self._caller(context)
        if request.result.client_id and request.result.client_id != self.config.client_id:
            raise RpcError("BAD_REQUEST", f"job result for {request.result.client_id!r}, this is {self.config.client_id!r}")
        p = self.party.save_job_result(request.result, "delivered")
        log.info("job %s %s (result in %s)", request.result.job_id, JOB_STATE_NAMES.get(request.result.state, "?"), p)
        return client_pb2.DeliverJobResultResponse()

    @guard
    def ListReceipts(self, request, context):
        self._caller(context)
        out = client_pb2.ListReceiptsResponse(provider_key_fingerprint=fingerprint(self.party.store.provider_key))
        self.party.store.verify()
        for env in self.party.store.envelopes():
            out.receipts.append(receipt_message(env))
        return out


class ClientServer:
    """The client's gRPC server: ClientService plus gRPC health checking, mutual TLS by default."""

    def __init__(self, config: ClientConfig, party: ClientParty | None = None):
        self.config = config
        check_port_file(config.port_file)
        self.party = party or ClientParty(config)
        self.server = grpc.server(ThreadPoolExecutor(max_workers=8, thread_name_prefix="llamdex-client"),
                                  interceptors=[MalformedRequestInterceptor()], options=[("grpc.max_receive_message_length", 8 << 20), ("grpc.max_send_message_length", 8 << 20),
                                                                                 EXCLUSIVE_PORT])
        client_pb2_grpc.add_ClientServiceServicer_to_server(ClientServicer(self.party), self.server)
        self.health = health.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.server)
        self.port = add_port(self.server, config.listen, config.tls, plaintext=config.plaintext)
        self.address = f"{config.listen.rsplit(':', 1)[0]}:{self.port}"

    def start(self) -> "ClientServer":
        self.server.start()
        announce_serving(self.health, SERVICE_NAME, self.address, self.config.port_file)
        log.info("client %s serving on %s", self.config.client_id, self.address)
        if self.party.pending_uploads():
            threading.Thread(target=self._resume_uploads, name="llamdex-resume-uploads", daemon=True).start()
        return self

    def _resume_uploads(self, attempts: int = 5) -> None:
        """Uploads cut off by the last stop are finished in the background (the provider may not be up yet)."""
        for i in range(attempts):
            try:
                done = self.party.resume_pending_uploads()
                log.info("resumed %d upload(s) cut off by the last stop", len(done))
                return
            except Exception as e:  # noqa: BLE001 - retried; the next TrainExpert or `client upload` resumes them too
                log.warning("resuming the pending uploads failed (%s); retry %d/%d", e, i + 1, attempts)
                time.sleep(min(2.0 * (i + 1), 10.0))

    def stop(self, grace: float = 2.0) -> None:
        self.health.enter_graceful_shutdown()
        self.server.stop(grace).wait(grace + 1)


__all__ = ["ClientParty", "ClientServer", "ClientServicer", "TrainedArtifact", "format_scores"]
