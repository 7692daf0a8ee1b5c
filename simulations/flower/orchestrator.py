"""The provider's orchestrator: one run of the federation, phase by phase, over a Flower `Grid`.

    connect     wait for one SuperNode per client
    register    each client makes its ECDSA P-256 key and sends its public key; the operator registers it with
                its budget (this query stands in for the out-of-band registration of a real deployment)
    train       each client trains and signs its expert and hands over the signed upload stream; the provider
                receives it on its real upload path (`ProviderParty.receive_upload`: header signature and nonce,
                chunk digests, tar digest, artifact signature and files, ε recomputed, budget charged, receipt signed)
    receipts    each client verifies its receipt under the pinned provider key and keeps it
    federated   (optional) DP-FedAvg experts per table, signed by a lead client and uploaded the same way
    customize   each client asks for customization; connector jobs are shared per schema (trained once)
    evaluate    each client sends its held-out questions, the provider answers them (`ProviderParty.ask`, the
                base LLM's answers alongside), and each client scores the answers on its side (labels never leave)
    ledger      the provider's hash-chained ledger is verified

A client that crashes, does not answer within `timeout-s` of the phase's last answer, hands over an
artifact the provider refuses (tampered, over budget, ...) is excluded with its reason; the rest go on.
"""

from __future__ import annotations

import json
import logging
import math
import sys
import time
import traceback
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, RecordDict
from flwr.serverapp import Grid

from simulations.flower.progress import report_progress
from simulations.flower.report import ClientRecord, FederationRecord, RunReport, SchemaRecord
from simulations.flower.scenario import Scenario, ScenarioError, refuse_an_earlier_run

log = logging.getLogger(__name__)
POLL_S = 0.25
CONNECT_POLL_S = 0.5


class ProviderOrchestrator:
    def __init__(self, grid: Grid, context: Context):
        self.grid, self.run_id = grid, context.run_id
        self.s = Scenario.from_run_config(dict(context.run_config))
        self.out = self.s.out_path(self.run_id)
        refuse_an_earlier_run(self.out, any_file=False)   # `flwr run .` with an out-dir of an earlier run: its files stay as they are
        self.out.mkdir(parents=True, exist_ok=True)
        engine = "simulation" if "flwr-simulation" in Path(sys.argv[0]).name else "deployment"
        self.report = RunReport(engine, str(self.run_id), self.s.to_dict(), code_from=str(Path(__file__).resolve().parent))
        self.records: dict[int, ClientRecord] = {}     # node id -> the client behind it
        self.party: Any = None
        self.provider_key: Any = None
        self.federated_arrays: dict[int, dict[str, Any]] = {}   # node id -> the federated expert its federation trained
        self._public_keys: dict[int, bytes] = {}                  # node id -> the PEM public key it registered
        self._receipts: dict[int, tuple[dict, str]] = {}          # node id -> (receipt envelope, artifact digest) to deliver
        self._current = "start"                                   # the phase running (named in a failed run's report)

    # --- the run ---------------------------------------------------------------------------------------------
    def run(self) -> RunReport:
        t0 = time.perf_counter()
        try:
            self.s.preset_value()   # a bad preset is refused before any client works
            self._make_provider_key()
            with self._phase("connect"):
                nodes = self._wait_for_nodes()
            with self._phase("register"):
                self._register(nodes)
            self._start_provider()
            with self._phase("train"):
                self._collect_experts()
            with self._phase("receipts"):
                self._deliver_receipts()
            if self.s.federated:
                with self._phase("federated"):
                    self._federate()
            with self._phase("customize"):
                self._customize()
            with self._phase("evaluate"):
                self._evaluate()
            with self._phase("ledger"):
                problems = self.party.ledger.verify_chain()
                self.report.ledger_verified = not problems
                self.report.ledger_problems = [f"seq {p.seq}: {p.reason}" for p in problems]
            if not self._active():   # a run in which every client was excluded measured nothing: it is not "completed"
                reasons = sorted({r.excluded for r in self.records.values() if r.excluded})
                raise RuntimeError(f"no client finished the run: all {len(self.records)} were excluded ({'; '.join(reasons)[:300]})")
            self.report.status = "completed"
        except Exception as e:  # noqa: BLE001 - the report says which phase failed and why
            self.report.status, self.report.error = "failed", f"phase {self._current}: {type(e).__name__}: {e}"
            log.error("run failed: %s\n%s", e, traceback.format_exc())
            print(f"[llamdex] run failed: {type(e).__name__}: {e}", flush=True)
        finally:
            self.report.total_s = time.perf_counter() - t0
            self.report.clients = sorted(self.records.values(), key=lambda r: r.client_id)
            self.report.write(self.out)
            if self.party is not None:
                self.party.close()
            print(f"[llamdex] report {self.out / 'report.json'} status={self.report.status}", flush=True)
        return self.report

    @contextmanager
    def _phase(self, name: str) -> Iterator[None]:
        t, self._current = time.perf_counter(), name
        try:
            yield
        finally:
            self.report.phases[name] = time.perf_counter() - t

    def _active(self) -> list[int]:
        """The nodes of the clients still in the run, in client order."""
        return sorted((n for n, r in self.records.items() if not r.excluded), key=lambda n: self.records[n].client_id)

    def _exclude(self, node: int, reason: str) -> None:
        rec = self.records[node]
        if not rec.excluded:
            rec.excluded = reason
            print(f"[llamdex] excluded {rec.client_id}: {reason}", flush=True)

    # --- messaging ---------------------------------------------------------------------------------------------
    def _exchange(self, phase: str, contents: dict[int, RecordDict], message_type: str,
                  on_reply: Callable[[int, Message], None] | None = None) -> dict[int, Message]:
        """Sends one message per node and collects the replies as they arrive (`on_reply` runs on each, in order).

        The phase ends when every node answered, or when `timeout-s` passed without any answer; a node
        that has not answered by then is excluded for timing out."""
        msgs = [Message(content, dst_node_id=node, message_type=message_type) for node, content in contents.items()]
        ids = list(self.grid.push_messages(msgs))
        node_of = dict(zip(ids, contents, strict=True))
        pending, replies = set(ids), {}
        total, last = len(ids), time.monotonic()
        report_progress(phase, 0, total)
        while pending and time.monotonic() - last < self.s.timeout_s:
            got = list(self.grid.pull_messages(list(pending)))
            for r in got:
                mid = r.metadata.reply_to_message_id
                if mid not in pending:
                    continue
                pending.discard(mid)
                node = node_of[mid]
                replies[node] = r
                note = ""
                if r.has_error():
                    self._exclude(node, f"crashed in phase {phase}: {r.error.reason.strip().splitlines()[-1] if r.error.reason else r.error.code}")
                    note = f"{self.records[node].client_id} crashed" if node in self.records else f"node {node} crashed"
                elif on_reply is not None:
                    try:
                        on_reply(node, r)
                    except Exception as e:  # noqa: BLE001 - one bad answer excludes its client, not the run
                        self._exclude(node, f"phase {phase}: {type(e).__name__}: {e}")
                report_progress(phase, total - len(pending), total, note)
            if got:
                last = time.monotonic()
            elif pending:
                time.sleep(POLL_S)
        for mid in pending:
            node = node_of[mid]
            if node not in self.records:
                self.records[node] = ClientRecord(client_id=f"node-{node}", node_id=node)
            self._exclude(node, f"timed out in phase {phase}: no answer within {self.s.timeout_s:g} s of the phase's last answer")
        return replies

    # --- phases ------------------------------------------------------------------------------------------------
    def _make_provider_key(self) -> None:
        from protocol.keys import generate_private_key, save_private_key, save_public_key

        keys = self.out / "provider" / "keys"
        keys.mkdir(parents=True, exist_ok=True)
        self.provider_key = generate_private_key()
        save_private_key(self.provider_key, keys / "provider.key")   # never over another run's key
        save_public_key(self.provider_key, keys / "provider.pub", overwrite=False)

    def _wait_for_nodes(self) -> list[int]:
        deadline = time.monotonic() + self.s.timeout_s
        nodes: list[int] = []
        while time.monotonic() < deadline:
            nodes = sorted(self.grid.get_node_ids())   # can be empty right after start: poll
            report_progress("connect", len(nodes), self.s.clients)
            if len(nodes) >= self.s.clients:
                break
            time.sleep(CONNECT_POLL_S)
        if len(nodes) != self.s.clients:
            raise ScenarioError("BAD_RUN_CONFIG", f"the run config names {self.s.clients} clients but {len(nodes)} SuperNodes are connected; "
                                f"run one SuperNode per client (simulation: --federation-config 'num-supernodes={self.s.clients}')",
                                rule="clients")
        return nodes

    def _register(self, nodes: list[int]) -> None:
        from protocol.keys import load_public_key, public_key_pem

        pem = public_key_pem(self.provider_key)
        seen: dict[str, int] = {}

        def on_reply(node: int, r: Message) -> None:
            c = r.content["client"]
            cid, i = str(c["client-id"]), int(c["partition-id"])
            if cid in seen or cid != self.s.client_id(i):
                raise ScenarioError("BAD_RUN_CONFIG", f"node {node} registers as {cid!r}, which node {seen.get(cid)} already is (or which is not "
                                    f"partition {i}); give every SuperNode its own partition-id", rule="partition-id")
            seen[cid] = node
            load_public_key(bytes(c["public-key"]))   # a key that does not parse is refused now, not at upload
            self.records[node] = ClientRecord(client_id=cid, node_id=node, dataset_id=str(c["dataset-id"]), schema_digest=str(c["schema-digest"]),
                                              budget=self.s.budget_for(i), epsilon_target=self.s.epsilon_for(i))
            self._public_keys[node] = bytes(c["public-key"])

        for node in nodes:
            self.records.setdefault(node, ClientRecord(client_id=f"node-{node}", node_id=node))
        self._exchange("register", {n: RecordDict({"provider": ConfigRecord({"public-key": pem})}) for n in nodes}, "query.register", on_reply)

    def _start_provider(self) -> None:
        """The provider's core, with every client registered as its operator would: public key and budget."""
        from dataclasses import fields

        from protocol.keys import load_public_key
        from provider_party.service.config import ProviderConfig, RegisteredClient
        from provider_party.service.core import ProviderParty

        clients = [RegisteredClient(self.records[n].client_id, load_public_key(self._public_keys[n]), epsilon_budget=self.records[n].budget)
                   for n in self._active()]
        prov = self.out / "provider"
        kw: dict[str, Any] = {}
        if self.s.provider_device != "cpu":
            if "device" not in {f.name for f in fields(ProviderConfig)}:
                raise ScenarioError("BAD_RUN_CONFIG", f"provider-device {self.s.provider_device!r}: this provider build runs on the CPU only; "
                                    "use provider-device='cpu'", rule="provider-device")
            kw["device"] = self.s.provider_device
        config = ProviderConfig(provider_id="provider", key=prov / "keys" / "provider.key", state=prov / "state",
                                connectors=Path(self.s.connectors).expanduser() if self.s.connectors else prov / "connectors",
                                preset=self.s.preset_value(), preload=False, clients=tuple(clients), **kw)
        self.party = ProviderParty(config)
        self.party.preload()   # the base LLM loads while the clients train

    def _receive(self, node: int, blobs: list[bytes]) -> tuple[str, dict]:
        """One upload through the provider's real path; returns (artifact digest, receipt envelope)."""
        from simulations.flower.upload_stream import parse_upload

        client = self.party.config.client(self.records[node].client_id)
        up = parse_upload(blobs)
        out = self.party.receive_upload(client, up.header, up.chunks)
        if not out.complete:
            raise RuntimeError(f"the upload stopped at {out.received_bytes} of {out.record.total_bytes} bytes")
        return out.record.artifact_digest, json.loads(out.record.receipt)

    def _collect_experts(self) -> None:
        from protocol.receipts import verify_receipt

        def on_reply(node: int, r: Message) -> None:
            rec, info = self.records[node], r.content["trained"]
            rec.n_train, rec.n_heldout, rec.train_seconds = int(info["n-train"]), int(info["n-heldout"]), float(info["seconds"])
            t = time.perf_counter()
            try:
                digest, env = self._receive(node, list(r.content["upload"]["messages"]))
            except Exception as e:  # noqa: BLE001 - the provider refused: the reason is the report's
                self._exclude(node, f"upload refused by the provider: {_reason(e)}")
                return
            rec.upload_seconds = time.perf_counter() - t
            receipt = verify_receipt(env, self.provider_key.public_key())
            rec.artifact_digest, rec.receipt_id = digest, receipt.receipt_id
            rec.epsilon = None if math.isinf(receipt.epsilon_recomputed) else float(receipt.epsilon_recomputed)
            rec.delta = float(receipt.delta)
            self._receipts[node] = (env, digest)

        nodes = self._active()
        chunk = self.party.config.limits.max_chunk_bytes
        self._exchange("train", {n: RecordDict({"config": ConfigRecord({"chunk-bytes": chunk})}) for n in nodes}, "train.expert", on_reply)

    def _deliver_receipts(self) -> None:
        """Each receipt signed since the last delivery goes to its client, which verifies it and keeps it."""
        def on_reply(node: int, r: Message) -> None:
            self.records[node].receipt_verified = True
            self.report.receipts_verified += 1

        todo = {n: RecordDict({"receipt": ConfigRecord({"envelope": json.dumps(env, sort_keys=True), "artifact-digest": digest})})
                for n, (env, digest) in self._receipts.items() if not self.records[n].excluded}
        self._receipts = {}
        self._exchange("receipts", todo, "query.receipt", on_reply)

    def _federate(self) -> None:
        from simulations.flower.federated import train_federated

        for t in self.s.federated_tables():
            table = self.s.table_id(t)
            members = [n for n in self._active() if self.records[n].dataset_id == table]
            if len(members) < 2:
                self.report.federations.append(FederationRecord(table, [self.records[n].client_id for n in members], "", 0, self.s.fed_clip, 0.0,
                                                                0.0, self.s.fed_epsilon, None, None, error="fewer than two clients left"))
                continue
            schema = self.s.table_refs()[t].schema()
            ids = [self.records[n].client_id for n in members]
            report_progress("federated", 0, len(members), f"{table}: {self.s.fed_rounds} DP-FedAvg rounds")
            res = train_federated(self.grid, table, members, ids, schema, target_epsilon=self.s.fed_epsilon, rounds=self.s.fed_rounds,
                                  clip=self.s.fed_clip, delta=self.s.fed_delta, local_epochs=self.s.fed_local_epochs, lr=self.s.fed_lr,
                                  seed=self.s.seed, timeout_s=self.s.timeout_s)
            fr = FederationRecord(table, ids, self.records[members[0]].client_id, res.rounds_released, res.clip, res.noise_multiplier, res.delta,
                                  res.target_epsilon, res.flower_epsilon, None, seconds=res.seconds, error=res.error,
                                  individual_epsilons=[self.records[n].epsilon for n in members])
            self.report.federations.append(fr)
            if res.statement is not None and res.error is None:
                self._upload_federated(members[0], res, fr)
            if res.arrays is not None:
                for n in members:
                    self.federated_arrays[n] = res.arrays
            report_progress("federated", len(members), len(members), f"{table}: {fr.error or 'uploaded'}")

    def _upload_federated(self, lead: int, res: Any, fr: FederationRecord) -> None:
        from protocol.receipts import verify_receipt

        arrays = ArrayRecord({k: Array(v) for k, v in res.arrays.items()})
        dp = ConfigRecord({"statement": json.dumps(res.statement.to_dict(), sort_keys=True), "chunk-bytes": self.party.config.limits.max_chunk_bytes})

        def on_reply(node: int, r: Message) -> None:
            try:
                digest, env = self._receive(node, list(r.content["upload"]["messages"]))
            except Exception as e:  # noqa: BLE001 - the federation's upload is refused; its clients go on
                fr.error = f"federated expert refused by the provider: {_reason(e)}"
                return
            receipt = verify_receipt(env, self.provider_key.public_key())
            fr.artifact_digest, fr.receipt_id, fr.epsilon_provider = digest, receipt.receipt_id, float(receipt.epsilon_recomputed)
            self._receipts[node] = (env, digest)

        self._exchange("federated-upload", {lead: RecordDict({"arrays": arrays, "dp": dp})}, "query.sign_federated", on_reply)
        self._deliver_receipts()

    def _customize(self) -> None:
        from provider_party.service.jobs import TERMINAL

        by_schema: dict[str, SchemaRecord] = {}
        jobs: dict[str, Any] = {}
        for node in self._active():
            rec = self.records[node]
            client = self.party.config.client(rec.client_id)
            try:
                r = self.party.customize(client, rec.artifact_digest)
            except Exception as e:  # noqa: BLE001
                self._exclude(node, f"customize refused: {_reason(e)}")
                continue
            sr = by_schema.setdefault(r.schema.digest, SchemaRecord(r.schema.digest, [], []))
            sr.clients.append(rec.client_id)
            if rec.dataset_id not in sr.dataset_ids:
                sr.dataset_ids.append(rec.dataset_id)
            jobs[r.job.job_id] = r.job
        total = len(jobs)
        report_progress("customize", 0, total)
        while True:
            done = [j for j in jobs.values() if j.state in TERMINAL]
            running = [j for j in jobs.values() if j.state not in TERMINAL]
            note = f"{running[0].events[-1].stage} {running[0].events[-1].fraction:.0%}" if running and running[0].events else ""
            report_progress("customize", len(done), total, note)
            if not running:
                break
            time.sleep(2.0)
        for sr in by_schema.values():
            mine = [j for j in jobs.values() if j.schema_digest == sr.schema_digest]
            trained = [j for j in mine if j.state == "SUCCEEDED" and not j.connectors_reused]
            failed = [j for j in mine if j.state != "SUCCEEDED"]
            sr.job_id = ",".join(j.job_id for j in mine)
            sr.seconds = sum(j.seconds for j in mine)
            sr.metrics = dict(trained[0].metrics) if trained else {}
            if failed:
                sr.connectors = f"failed: {failed[0].error}"
                for node in self._active():
                    if self.records[node].schema_digest == sr.schema_digest:
                        self._exclude(node, f"connectors for its schema failed: {failed[0].error}")
            elif trained:
                sr.connectors = f"trained once in this run ({len(trained)} job), shared by {len(sr.clients)} clients"
            else:
                sr.connectors = f"reused from the connector store, shared by {len(sr.clients)} clients"
            self.report.schemas.append(sr)

    def _ask_in_batches(self, client_id: str, questions: list[str], artifact_digest: str, *, include_base: bool = False) -> list[Any]:
        """The provider's answers to `questions` from one named expert, `ask-batch` questions per Ask."""
        client = self.party.config.client(client_id)
        step = self.s.ask_batch
        return [self.party.ask(client, questions[s:s + step], artifact_digest=artifact_digest, include_base=include_base)
                for s in range(0, len(questions), step)]

    def _evaluate(self) -> None:
        asked: dict[int, tuple[list[int], list[int]]] = {}
        fed_asked: dict[int, list[int]] = {}
        # a federation's expert is the lead's upload; the provider asks it each member's questions under the lead's identity
        federation_of = {cid: fr for fr in self.report.federations if fr.artifact_digest and fr.error is None for cid in fr.clients}

        def on_questions(node: int, r: Message) -> None:
            qs = [str(q) for q in r.content["questions"]["questions"]]
            rec = self.records[node]
            # named, not the client's latest: a federation's lead also holds the federated expert, uploaded after its own,
            # and its scores compare Llamdex with its own expert
            results = self._ask_in_batches(rec.client_id, qs, rec.artifact_digest, include_base=True)
            if results:
                rec.answered_by = results[-1].artifact_digest
            asked[node] = ([int(a.probs.argmax()) for res in results for a in res.answers],
                           [int(a.probs.argmax()) for res in results for a in res.base])
            fr = federation_of.get(rec.client_id)
            if fr is not None:
                try:
                    fed_asked[node] = [int(a.probs.argmax()) for res in self._ask_in_batches(fr.lead, qs, fr.artifact_digest) for a in res.answers]
                except Exception as e:  # noqa: BLE001 - the member keeps its own scores; the federation says why its Llamdex has none
                    fr.llamdex_error = fr.llamdex_error or f"asking the federated expert through Llamdex failed: {_reason(e)}"

        self._exchange("questions", {n: RecordDict() for n in self._active()}, "query.questions", on_questions)

        def on_scores(node: int, r: Message) -> None:
            self.records[node].scores.update(json.loads(str(r.content["scores"]["json"])))

        contents = {}
        for node in self._active():
            llamdex, base = asked[node]
            answers = {"llamdex": llamdex, "base": base} | ({"federated-llamdex": fed_asked[node]} if node in fed_asked else {})
            rd = RecordDict({"answers": ConfigRecord(answers)})
            if node in self.federated_arrays:
                rd["federated"] = ArrayRecord({k: Array(v) for k, v in self.federated_arrays[node].items()})
            contents[node] = rd
        self._exchange("score", contents, "query.score", on_scores)
        for fr in self.report.federations:
            recs = [r for r in self.records.values() if r.client_id in fr.clients and "federated_expert" in r.scores]
            if recs:
                fr.federated_accuracy = sum(r.scores["federated_expert"]["accuracy"] for r in recs) / len(recs)
                fr.individual_accuracy_mean = sum(r.scores["expert"]["accuracy"] for r in recs) / len(recs)
            through = [r for r in recs if "federated_llamdex" in r.scores]
            if through:
                fr.federated_llamdex_accuracy = sum(r.scores["federated_llamdex"]["accuracy"] for r in through) / len(through)
                fr.federated_llamdex_agreement = sum(r.scores["federated_llamdex_agreement"] for r in through) / len(through)


def _reason(e: BaseException) -> str:
    """'[CODE] message' for the project's coded errors (their text starts with the code), else 'Type: message'."""
    return str(e) if getattr(e, "code", None) else f"{type(e).__name__}: {e}"


__all__ = ["ProviderOrchestrator"]
