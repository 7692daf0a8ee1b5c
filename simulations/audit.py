"""Offline audit of what the two parties exchanged: artifacts, receipts, the provider's ledger, and every ε.

Inputs are plain files: artifact folders, receipts (a folder of `*.json` DSSE envelopes, `*.jsonl`
files with one envelope per line, or single files), and a copy of the ledger's SQLite file. No
network and no service is needed; the ledger file is copied to a temporary folder before it is
opened, so the evidence is never modified.

Checks (each failure is one `Finding` naming the record and the rule):
- **artifact**: `ArtifactVerifier` (layout, signature under the trusted client keys, every digest and
  size, spec, schema, tensor header, DP statement), then ε (below);
- **receipt**: provider signature, canonical payload, budget arithmetic of each receipt
  (`verify_receipt`), then each client's hash chain (`verify_chain`: sequence, previous digest,
  running spend per dataset), then ε;
- **ledger**: `Ledger.verify_chain` (row hash chain, every receipt and its agreement with its row,
  per-client receipt chains, budget arithmetic, budgets table vs the entries), plus: spend within the
  current budget, and ε of every upload row;
- **ε, twice**: every DP statement and every receipt's accountant parameters are recomputed with
  Opacus (`protocol.dp.compute_epsilon`) *and* with Google's `dp-accounting` (RDP accountant for
  `rdp` claims, PLD accountant for `prv` claims); the claim, the provider's recomputation and both
  accountants must agree (RDP: 1 %, the two implement the same bound but their numerics differ
  slightly at some orders; PRV vs PLD: 3 %, they are different numerical methods) — and the claim
  must never be *below* the independent value beyond that tolerance;
- **cross-references**: every audited artifact is named by an upload receipt (and the ledger) whose
  accountant parameters and claimed ε equal its dp.json (a swapped artifact has no receipt); every
  receipt given is in the ledger and every ledger receipt of the audited clients is among those given
  (a removed receipt is noticed even at the end of a chain).

- **canary** (optional, `canary=CanaryAuditSpec(...)`): the white-box one-run audit of the training
  implementation behind each artifact (`simulations.attacks.gradient_canary`): the artifact's DP
  statement is replayed (same noise multiplier, sampling rate, steps, clipping norm, δ) through the
  client's training code on the given training records with m gradient canaries; an empirical ε
  lower bound above the claimed ε fails the artifact: its code does not deliver what it claims.

`run_audit(...)` returns an `AuditReport`; `llamdex audit` prints it and exits 1 on any failure.
"""

from __future__ import annotations

import json
import math
import shutil
import sqlite3
import tempfile
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

from protocol.durable_db import describe_tables, read_only_store
from protocol.errors import LedgerError

RDP_TOLERANCE = 0.01     # Opacus RDP vs dp-accounting RDP: same bound, but dp-accounting drops fractional orders whose
                         # series fails to converge (ε = 8: 7.991 vs 8.000, 0.11 %), so exact agreement is not guaranteed
PRV_TOLERANCE = 0.03     # Opacus PRV vs dp-accounting PLD (different numerical methods)
CLAIM_TOLERANCE = 1e-3   # claimed vs recomputed with the same accountant (protocol.dp.verify_statement)


@dataclass(frozen=True)
class Finding:
    """One check on one record. `subject` names the record (artifact folder, receipt, ledger row)."""

    subject: str
    check: str
    ok: bool
    detail: str

    def to_dict(self) -> dict[str, Any]:
        return {"subject": self.subject, "check": self.check, "ok": self.ok, "detail": self.detail}


@dataclass
class AuditReport:
    findings: list[Finding] = field(default_factory=list)
    epsilons: list[dict[str, Any]] = field(default_factory=list)   # every ε recomputed, for the report
    canaries: list[dict[str, Any]] = field(default_factory=list)   # one per (artifact, seed) canary audit

    @property
    def ok(self) -> bool:
        return all(f.ok for f in self.findings)

    @property
    def failures(self) -> list[Finding]:
        return [f for f in self.findings if not f.ok]

    def add(self, subject: str, check: str, ok: bool, detail: str) -> None:
        self.findings.append(Finding(subject, check, ok, detail))

    def to_dict(self) -> dict[str, Any]:
        return {"ok": self.ok, "checks": len(self.findings), "failures": [f.to_dict() for f in self.failures],
                "findings": [f.to_dict() for f in self.findings], "epsilons": self.epsilons, "canaries": self.canaries}

    def render(self, verbose: bool = False) -> str:
        lines = []
        for f in self.findings:
            if verbose or not f.ok:
                lines.append(f"{'ok  ' if f.ok else 'FAIL'} [{f.check}] {f.subject}: {f.detail}")
        if self.epsilons:
            lines.append("epsilon (claimed | provider | Opacus | dp-accounting):")
            for e in self.epsilons:
                fmt = lambda v: "-" if v is None else ("inf" if v == math.inf else f"{v:.6g}")  # noqa: E731
                lines.append(f"  {e['subject']}: {fmt(e.get('claimed'))} | {fmt(e.get('provider'))} | {fmt(e.get('opacus'))} | "
                             f"{fmt(e.get('second'))} ({e.get('second_method', '-')})")
        if self.canaries:
            lines.append("canary audit (white-box, gradient canaries): ε lower bound | claimed ε:")
            for c in self.canaries:
                claim = "∞ (no DP)" if c["epsilon_claimed"] is None else f"{c['epsilon_claimed']:.4g}"
                lines.append(f"  {c['subject']} seed {c['seed']}: {c['epsilon_lb']:.3f} at {c['confidence']:.0%} | {claim}")
        n_fail = len(self.failures)
        lines.append(f"audit {'PASSED' if self.ok else 'FAILED'}: {len(self.findings)} checks, {n_fail} failure(s)")
        return "\n".join(lines)


# --- the second accountant -------------------------------------------------------------------------


def second_accountant_epsilon(dp: Any = None, *, noise_multiplier: float | None = None, sample_rate: float | None = None,
                              steps: int | None = None, delta: float | None = None, accountant: str | None = None) -> float:
    """ε of `steps` Poisson-subsampled Gaussian steps with Google's dp-accounting: its RDP accountant for
    an `rdp` claim, its PLD accountant for a `prv` claim. Pass a DPStatement or the parameters.

    The RDP accountant minimises over Opacus' Rényi orders, not its own wider set: an `rdp` claim is the bound
    at Opacus' best order (both parties compute it so), and this checks that bound with independent code. With
    the wider set an honest claim at very small ε failed the audit, since the best order there is beyond
    Opacus' largest (titanic at target ε 0.1: claimed 0.0927, dp-accounting's own orders 0.0802), though a
    looser bound is still a valid guarantee."""
    import dp_accounting
    from dp_accounting import pld, rdp

    if dp is not None:
        noise_multiplier, sample_rate, steps = dp.noise_multiplier, dp.sample_rate, dp.steps
        delta, accountant = dp.delta, dp.accountant
    if None in (noise_multiplier, sample_rate, steps, delta):
        raise ValueError("give a DPStatement or noise_multiplier, sample_rate, steps and delta")
    event = dp_accounting.PoissonSampledDpEvent(float(sample_rate), dp_accounting.GaussianDpEvent(float(noise_multiplier)))
    if accountant == "prv":
        acc = pld.PLDAccountant(value_discretization_interval=1e-3)
    else:
        from opacus.accountants import RDPAccountant

        acc = rdp.RdpAccountant(orders=RDPAccountant.DEFAULT_ALPHAS)
    acc.compose(event, int(steps))
    return float(acc.get_epsilon(float(delta)))


def second_method(accountant: str) -> str:
    return "dp-accounting PLD" if accountant == "prv" else "dp-accounting RDP"


def _rel(a: float, b: float) -> float:
    return abs(a - b) / max(abs(b), 1e-12)


def check_epsilon(report: AuditReport, subject: str, *, mechanism: str, noise_multiplier: float, sample_rate: float, steps: int,
                  delta: float, accountant: str, claimed: float, provider: float | None = None) -> None:
    """Recomputes ε with both accountants and records whether the claim (and the provider's ε) agree."""
    from protocol.dp import compute_epsilon

    if mechanism == "none":
        ok = math.isinf(claimed) and (provider is None or math.isinf(provider))
        report.add(subject, "epsilon", ok, "no DP: ε = ∞" if ok else f"mechanism 'none' but ε claimed {claimed!r}, provider {provider!r}")
        report.epsilons.append({"subject": subject, "claimed": claimed, "provider": provider, "opacus": math.inf, "second": math.inf,
                                "second_method": "-"})
        return
    try:
        opacus = compute_epsilon(float(noise_multiplier), float(sample_rate), int(steps), float(delta), accountant)
        second = second_accountant_epsilon(noise_multiplier=noise_multiplier, sample_rate=sample_rate, steps=steps, delta=delta,
                                           accountant=accountant)
    except Exception as e:  # a malformed parameter is a finding, not a crash
        report.add(subject, "epsilon", False, f"cannot recompute ε from noise_multiplier {noise_multiplier!r}, sample_rate {sample_rate!r}, "
                                              f"steps {steps!r}, delta {delta!r}, accountant {accountant!r}: {e}")
        return
    tol = PRV_TOLERANCE if accountant == "prv" else RDP_TOLERANCE
    report.epsilons.append({"subject": subject, "claimed": claimed, "provider": provider, "opacus": opacus, "second": second,
                            "second_method": second_method(accountant)})
    params = f"noise {noise_multiplier:g}, q {sample_rate:g}, {steps} steps, δ {delta:g}, {accountant}"
    problems = []
    if not math.isfinite(claimed) or _rel(claimed, opacus) > CLAIM_TOLERANCE:
        problems.append(f"claimed ε {claimed:.6g} but Opacus recomputes {opacus:.6g} from ({params})")
    if provider is not None and (not math.isfinite(provider) or _rel(provider, opacus) > CLAIM_TOLERANCE):
        problems.append(f"provider's recomputed ε {provider:.6g} but Opacus gives {opacus:.6g} from ({params})")
    if _rel(opacus, second) > tol:
        problems.append(f"Opacus ε {opacus:.6g} and {second_method(accountant)} ε {second:.6g} differ by {_rel(opacus, second):.2%} (> {tol:.1%})")
    if math.isfinite(claimed) and claimed < second * (1 - tol):
        problems.append(f"claimed ε {claimed:.6g} is below the independent {second_method(accountant)} value {second:.6g}")
    report.add(subject, "epsilon", not problems, "; ".join(problems) if problems else
               f"ε {claimed:.6g} = Opacus {opacus:.6g} ≈ {second_method(accountant)} {second:.6g} ({params})")


# --- artifacts -------------------------------------------------------------------------------------


def audit_artifact(report: AuditReport, folder: Path, client_keys: Any) -> Any:
    """Verifies one artifact folder; returns the VerifiedArtifact or None."""
    from protocol.artifact import ArtifactVerifier
    from protocol.errors import LlamdexError

    subject = f"artifact {folder}"
    if client_keys is None:
        report.add(subject, "signature", False, "no trusted client public key given (--client-key); an artifact cannot be verified without one")
        return None
    try:
        va = ArtifactVerifier(client_keys).verify(folder)
    except LlamdexError as e:
        code = getattr(e, "code", type(e).__name__)
        report.add(subject, "artifact", False, f"{code}: {e}")
        return None
    report.add(subject, "artifact", True, f"signature by {va.signer_fingerprint[:23]}…, digests, spec, schema and DP statement verify "
                                          f"(digest {va.digest})")
    dp = va.dp
    check_epsilon(report, subject, mechanism=dp.mechanism, noise_multiplier=dp.noise_multiplier, sample_rate=dp.sample_rate,
                  steps=dp.steps, delta=dp.delta, accountant=dp.accountant, claimed=dp.epsilon)
    if dp.is_private:
        from protocol.dp import bucket_bounds

        lo, _ = bucket_bounds(dp.dataset_size_bucket)
        report.add(subject, "delta", dp.delta < 1.0 / lo,
                   f"δ {dp.delta:g} {'<' if dp.delta < 1.0 / lo else '>='} 1/n for a training set of {dp.dataset_size_bucket} records")
    return va


# --- receipts --------------------------------------------------------------------------------------


SQLITE_SUFFIXES = (".sqlite", ".sqlite3", ".db")


def load_receipts(paths: Iterable[str | Path]) -> list[tuple[str, Any]]:
    """(source, envelope) pairs from folders of *.json / *.jsonl, JSONL files, JSON files (one envelope
    or a list, as `ReceiptStore.export` writes) and the client's SQLite receipt store (read from a copy)."""
    out: list[tuple[str, Any]] = []
    for p in map(Path, paths):
        files = sorted(q for q in p.iterdir() if q.suffix in (".json", ".jsonl")) if p.is_dir() else [p]
        for f in files:
            if f.suffix in SQLITE_SUFFIXES:
                out.extend(_receipt_store_envelopes(f))
                continue
            text = f.read_text(encoding="utf-8", errors="replace")   # bytes that are not text fail as JSON: a finding, not a crash
            if f.suffix == ".jsonl":
                for i, line in enumerate(text.splitlines(), 1):
                    if line.strip():
                        out.append((f"{f}:{i}", _loads(line)))
            else:
                data = _loads(text)
                items = data if isinstance(data, list) else [data]
                out.extend((f"{f}" if len(items) == 1 else f"{f}[{i}]", d) for i, d in enumerate(items))
    return out


def _receipt_store_envelopes(path: Path) -> list[tuple[str, Any]]:
    """The envelopes of a client's receipt store; one unreadable entry, saying why, for a file that is not one
    (another SQLite file or no database at all must fail the audit by name, not crash it or pass as empty)."""
    with tempfile.TemporaryDirectory(prefix="llamdex-audit-") as tmp:
        copy = _snapshot(path, Path(tmp))
        try:
            with read_only_store(copy) as (con, tables):
                if "receipts" not in tables:
                    return [(str(path), _unreadable(f"not a receipt store: {describe_tables(tables)}, and a client's receipt store "
                                                    "has 'receipts' (a client keeps it as receipts.db in its workspace)"))]
                rows = con.execute("SELECT sequence, envelope FROM receipts ORDER BY sequence").fetchall()
        except sqlite3.DatabaseError as e:
            return [(str(path), _unreadable(f"not a receipt store: {e}"))]
    return [(f"{path}#sequence={seq}", _loads(env)) for seq, env in rows]


def _unreadable(reason: str) -> dict[str, str]:
    return {"__unreadable__": reason}


def _loads(text: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        return _unreadable(f"not JSON: {e}")
    except RecursionError:   # arrays nested thousands deep: no receipt looks like that
        return _unreadable("not a receipt: its JSON nests deeper than Python's parser follows")


def audit_receipts(report: AuditReport, envelopes: Sequence[tuple[str, Any]], provider_key: Any) -> list[Any]:
    """Verifies each receipt and each client's chain; returns the verified Receipts."""
    from protocol.errors import ReceiptError
    from protocol.receipts import verify_chain, verify_receipt

    verified, by_client = [], defaultdict(list)
    for source, env in envelopes:
        subject = f"receipt {source}"
        if isinstance(env, dict) and "__unreadable__" in env:
            report.add(subject, "receipt", False, env["__unreadable__"])
            continue
        if provider_key is None:
            report.add(subject, "receipt", False, "no provider public key given (--provider-key); receipts cannot be verified")
            continue
        try:
            r = verify_receipt(env, provider_key)
        except ReceiptError as e:
            report.add(subject, "receipt", False, f"{e.code}: {e}")
            continue
        report.add(f"receipt {r.receipt_id} (client {r.client_id!r}, sequence {r.sequence})", "receipt", True,
                   f"provider signature and arithmetic verify ({source})")
        verified.append(r)
        by_client[r.client_id].append((r, env))
    for client, items in sorted(by_client.items()):
        items.sort(key=lambda t: t[0].sequence)
        seqs = [r.sequence for r, _ in items]
        dup = sorted({s for s in seqs if seqs.count(s) > 1})
        if dup:
            report.add(f"receipts of client {client!r}", "chain", False, f"sequence numbers {dup} appear more than once")
            continue
        try:
            verify_chain([env for _, env in items], provider_key)
        except ReceiptError as e:
            report.add(f"receipts of client {client!r}", "chain", False, f"{e.code}: {e}")
        else:
            report.add(f"receipts of client {client!r}", "chain", True, f"{len(items)} receipts chain from sequence 1 to {seqs[-1]}")
    for r in verified:
        if r.kind != "upload":
            continue
        ap = r.accountant_params
        check_epsilon(report, f"receipt {r.receipt_id} (client {r.client_id!r}, sequence {r.sequence})",
                      mechanism=ap.get("mechanism", "dp-sgd"), noise_multiplier=ap.get("noise_multiplier"), sample_rate=ap.get("sample_rate"),
                      steps=ap.get("steps"), delta=r.delta, accountant=r.accountant, claimed=r.epsilon_claimed, provider=r.epsilon_recomputed)
    return verified


# --- ledger ----------------------------------------------------------------------------------------


def _snapshot(path: Path, into: Path) -> Path:
    """Copies the SQLite file and its WAL/SHM companions so the audit never writes to the evidence."""
    dest = into / path.name
    shutil.copy2(path, dest)
    for suffix in ("-wal", "-shm"):
        side = path.with_name(path.name + suffix)
        if side.exists():
            shutil.copy2(side, into / (path.name + suffix))
    return dest


def audit_ledger(report: AuditReport, path: Path, provider_key: Any) -> list[dict[str, Any]]:
    """Verifies the ledger file; returns its rows (as dicts, receipts parsed) for cross-checks."""
    from protocol.dsse import Envelope
    from provider_party.service.ledger import LEDGER_FORMAT, Ledger, lost_append_only_triggers

    subject = f"ledger {path}"
    if not path.is_file():
        inside = path / "ledger.db"
        report.add(subject, "ledger", False, f"is a folder; give the ledger file in it, {inside}" if path.is_dir() and inside.is_file()
                   else "is a folder, not a ledger file" if path.is_dir() else "file does not exist")
        return []
    with tempfile.TemporaryDirectory(prefix="llamdex-audit-") as tmp:
        copy = _snapshot(path, Path(tmp))
        try:
            ledger = Ledger(copy, create=False)
            discrepancies = ledger.verify_chain(provider_key)
            con = sqlite3.connect(str(copy))
            con.row_factory = sqlite3.Row
            rows = [dict(r) for r in con.execute("SELECT * FROM entries WHERE kind IN ('upload', 'deletion') ORDER BY seq")]
            budgets = [dict(r) for r in con.execute("SELECT * FROM budgets")]
            lost = lost_append_only_triggers(con)
            con.close()
            chain_budgets, revocations, fmt = ledger_budgets_and_revocations(ledger, rows)
        except LedgerError as e:
            report.add(subject, "ledger", False, str(e).replace(str(copy), str(path)))
            return []
        except Exception as e:
            report.add(subject, "ledger", False, f"cannot read the ledger: {type(e).__name__}: {e}")
            return []
    if provider_key is None:
        report.add(subject, "signature", False, "no provider public key given (--provider-key); receipts in the ledger were not verified")
    for d in discrepancies:
        report.add(f"ledger {path.name} seq {d.seq}" if d.seq is not None else f"ledger {path.name}", "ledger", False, d.reason)
    if not discrepancies:
        report.add(subject, "ledger", True, f"{len(rows)} entries: hash chain, receipts, per-client chains and budget arithmetic verify")
    if lost and fmt == LEDGER_FORMAT:   # v1 had no guards; the chain still verifies what is there, but a row could go unrefused
        report.add(subject, "ledger", False, f"the append-only guard(s) {lost} of table entries were dropped: the file was altered "
                   "(the provider restores them at its next start)")
    spent: dict[tuple[str, str], float] = defaultdict(float)
    for row in rows:
        eps = math.inf if row["epsilon"] is None else float(row["epsilon"])
        if row["kind"] == "upload":
            spent[(row["client_id"], row["dataset_id"])] += eps
        try:
            pred = json.loads(Envelope.from_json(row["receipt"]).payload)["predicate"]
        except Exception:
            continue  # verify_chain already reported an unreadable receipt
        row["_predicate"] = pred
        if row["kind"] == "upload":
            ap = pred.get("accountant_params", {})
            claimed = math.inf if pred.get("epsilon_claimed") is None else float(pred["epsilon_claimed"])
            check_epsilon(report, f"ledger {path.name} seq {row['seq']}", mechanism=ap.get("mechanism", "dp-sgd"),
                          noise_multiplier=ap.get("noise_multiplier"), sample_rate=ap.get("sample_rate"), steps=ap.get("steps"),
                          delta=float(row["delta"]), accountant=pred.get("accountant", "rdp"), claimed=claimed, provider=eps)
    for b in budgets:
        key = (b["client_id"], b["dataset_id"])
        budget = chain_budgets.get(key, math.inf if b["epsilon_budget"] is None else float(b["epsilon_budget"]))   # what the chain explains
        total = spent.get(key, 0.0)
        ok = total <= budget * (1 + 1e-9)
        report.add(f"ledger {path.name} budget of client {key[0]!r} dataset {key[1]!r}", "budget", ok,
                   f"uploads charge ε {total:.6g} in total against a budget of {budget:.6g}" + ("" if ok else ": overspent"))
    audit_budget_events_and_revocations(report, path, rows, budgets, chain_budgets, revocations, fmt)
    return rows


# --- budget events and revoked client keys (ledger format v2) ----------------------------------------


def ledger_budgets_and_revocations(ledger: Any, rows: list[dict[str, Any]]) -> tuple[dict[tuple[str, str], float], dict[str, Any], str]:
    """The ε budget of each dataset as the chain explains it (its last `budget` event; for a format-v1 ledger
    the budget its last entry recorded), the revoked client keys, and the ledger's format."""
    from provider_party.service.ledger import LEDGER_FORMAT

    out: dict[tuple[str, str], float] = {}
    if ledger.format == LEDGER_FORMAT:
        for e in ledger.events("budget"):
            out[(e.client_id, e.dataset_id)] = e.budget
        return out, ledger.revocations(), ledger.format
    for row in rows:
        out[(row["client_id"], row["dataset_id"])] = math.inf if row["budget"] is None else float(row["budget"])
    return out, {}, ledger.format


def audit_budget_events_and_revocations(report: AuditReport, path: Path, rows: list[dict[str, Any]], budgets: list[dict[str, Any]],
                                        chain_budgets: dict[tuple[str, str], float], revocations: dict[str, Any], fmt: str) -> None:
    """Every budget must be one the chain explains (Ledger.verify_chain reports each one that is not); a format-v1
    ledger, whose budget changes were not chain events, is compared with its last entries and said to be v1.
    Each upload whose artifact was signed by a client key revoked since is named: its receipt stays valid evidence."""
    from provider_party.service.ledger import LEDGER_FORMAT

    if fmt != LEDGER_FORMAT:
        report.add(f"ledger {path.name}", "format", True, f"format {fmt}: budget changes were not chain events then; each budget is "
                   "checked against the last entry of its dataset (the provider upgrades the file to v2 when it opens it)")
        for b in budgets:
            key = (b["client_id"], b["dataset_id"])
            table = math.inf if b["epsilon_budget"] is None else float(b["epsilon_budget"])
            if key in chain_budgets and not math.isclose(table, chain_budgets[key]) and table != chain_budgets[key]:
                report.add(f"ledger {path.name} budget of client {key[0]!r} dataset {key[1]!r}", "budget", False,
                           f"the budgets table says ε {table:g} but the last entry of this dataset recorded {chain_budgets[key]:g}: "
                           "a budget no chain entry explains")
    for row in rows:
        rev = revocations.get(row.get("client_key") or "")
        if row["kind"] == "upload" and rev is not None:
            report.add(f"ledger {path.name} seq {row['seq']} (receipt {row['receipt_id']}, client {row['client_id']!r})", "client key", True,
                       f"the receipt verifies; the client key {rev.key_fingerprint} that signed this artifact was revoked at ledger "
                       f"seq {rev.seq} ({rev.revoked_at}: {rev.reason})")


# --- cross-references ------------------------------------------------------------------------------


def cross_check(report: AuditReport, artifacts: list[Any], receipts: list[Any], ledger_rows: list[dict[str, Any]] | None,
                receipts_given: bool) -> None:
    """Artifacts ↔ receipts ↔ ledger."""
    uploads = [r for r in receipts if r.kind == "upload"]
    ledger_uploads = [row for row in (ledger_rows or []) if row["kind"] == "upload"]
    for va in artifacts:
        subject = f"artifact {va.folder}"
        named = [r for r in uploads if r.artifact_digest == va.digest]
        in_ledger = [row for row in ledger_uploads if row["artifact_digest"] == va.digest]
        if receipts_given:
            if not named:
                report.add(subject, "cross-reference", False, f"no upload receipt names its digest {va.digest}: the artifact was swapped or never uploaded")
            for r in named:
                ap, dp = r.accountant_params, va.dp
                diffs = [k for k, a, b in (("mechanism", ap.get("mechanism"), dp.mechanism), ("noise_multiplier", ap.get("noise_multiplier"), dp.noise_multiplier),
                                           ("sample_rate", ap.get("sample_rate"), dp.sample_rate), ("steps", ap.get("steps"), dp.steps),
                                           ("max_grad_norm", ap.get("max_grad_norm"), dp.max_grad_norm), ("accountant", r.accountant, dp.accountant),
                                           ("delta", r.delta, dp.delta), ("epsilon_claimed", r.epsilon_claimed, dp.epsilon)) if a != b]
                report.add(subject, "cross-reference", not diffs, f"receipt {r.receipt_id} names this artifact" +
                           (f" but disagrees with its dp.json on {diffs}" if diffs else " with the same DP parameters"))
        if ledger_rows is not None:
            report.add(subject, "cross-reference", bool(in_ledger), f"{len(in_ledger)} ledger upload(s) name its digest" if in_ledger
                       else f"the ledger has no upload of digest {va.digest}: the artifact was swapped or never uploaded")
    if ledger_rows is not None and receipts_given:
        ledger_digests = {row["receipt_digest"]: row for row in ledger_rows}
        given = {r.digest: r for r in receipts}
        for dig, r in given.items():
            if dig not in ledger_digests:
                report.add(f"receipt {r.receipt_id} (client {r.client_id!r}, sequence {r.sequence})", "cross-reference", False,
                           "this receipt is not in the ledger")
        clients = {r.client_id for r in receipts}
        for dig, row in ledger_digests.items():
            if row["client_id"] in clients and dig not in given:
                report.add(f"ledger seq {row['seq']} (receipt {row['receipt_id']}, client {row['client_id']!r}, sequence {row['receipt_seq']})",
                           "cross-reference", False, "the ledger issued this receipt but it is missing from the receipts given")


# --- the canary audit ------------------------------------------------------------------------------


@dataclass(frozen=True)
class CanaryAuditSpec:
    """What the canary audit replays on: the artifact's training records (encoded, with their schema)
    and how many canaries, independent runs and which confidence."""

    x: Any
    y: Any
    schema: Any
    canaries: int = 1000
    seeds: int = 1
    confidence: float = 0.95


def audit_canary(report: AuditReport, va: Any, spec: CanaryAuditSpec) -> None:
    """Replays one verified artifact's DP statement with gradient canaries; fails it when the empirical
    lower bound exceeds the claimed ε (see the module docstring)."""
    from client_party.expert_training import TrainConfig
    from simulations.attacks.gradient_canary import run_gradient_canary_audit

    subject = f"artifact {va.folder}"
    if spec.schema.digest != va.schema.digest:
        report.add(subject, "canary", False, f"the training records given are under schema {spec.schema.name!r} ({spec.schema.digest}), "
                                            f"the artifact's is {va.schema.name!r} ({va.schema.digest}); give the records it was trained on")
        return
    dp = va.dp
    for seed in range(spec.seeds):
        try:
            if dp.is_private:
                audit = run_gradient_canary_audit(spec.x, spec.y, spec.schema, TrainConfig.private(dp.epsilon), m=spec.canaries, seed=seed,
                                                  replay=dp, confidence=spec.confidence)
            else:
                audit = run_gradient_canary_audit(spec.x, spec.y, spec.schema, TrainConfig(), m=spec.canaries, seed=seed,
                                                  confidence=spec.confidence)
        except ValueError as e:
            report.add(subject, "canary", False, f"cannot replay the artifact's DP statement on the {len(spec.x)} records given: {e}")
            return
        report.canaries.append({"subject": subject, "seed": seed, **audit.to_dict()})
        if not dp.is_private:
            report.add(subject, "canary", True, f"no DP claimed; gradient-canary ε lower bound {audit.epsilon_lb:.3f} at "
                                               f"{spec.confidence:.0%} ({spec.canaries} canaries, seed {seed})")
            continue
        ok = not audit.exceeds_claim
        report.add(subject, "canary", ok,
                   f"gradient-canary ε lower bound {audit.epsilon_lb:.3f} at {spec.confidence:.0%} "
                   f"{'<=' if ok else 'EXCEEDS'} the claimed ε {dp.epsilon:.4g} ({spec.canaries} canaries, seed {seed}, replayed "
                   f"noise {dp.noise_multiplier:g}, q {dp.sample_rate:g}, {dp.steps} steps)"
                   + ("" if ok else ": the training code does not deliver its DP claim (noise, clipping, sampling or accounting)"))


def run_audit(*, artifacts: Sequence[str | Path] = (), receipts: Sequence[str | Path] = (), ledger: str | Path | None = None,
              client_keys: Any = None, provider_key: Any = None, canary: CanaryAuditSpec | None = None) -> AuditReport:
    """Audits everything given; see the module docstring for the checks."""
    from protocol.keys import load_public_key
    from protocol.receipt_keys import load_trust

    report = AuditReport()
    pkey = load_trust(provider_key) if provider_key is not None else None   # one PEM, or a receipt key list (rotations)
    ckeys = None
    if client_keys is not None:
        ckeys = [load_public_key(k) for k in (client_keys if isinstance(client_keys, (list, tuple)) else [client_keys])]
    verified = [va for va in (audit_artifact(report, Path(a), ckeys) for a in artifacts) if va is not None]
    if canary is not None:
        if not artifacts:
            report.add("canary audit", "canary", False, "the canary audit replays an artifact's DP statement: give --artifact")
        for va in verified:
            audit_canary(report, va, canary)
    rs = audit_receipts(report, load_receipts(receipts), pkey) if receipts else []
    rows = audit_ledger(report, Path(ledger), pkey) if ledger is not None else None
    cross_check(report, verified, rs, rows, receipts_given=bool(receipts))
    if not report.findings:
        report.add("audit", "inputs", False, "nothing to audit: the receipts given hold no receipt" if receipts else
                   "nothing to audit: give artifact folders, receipts and/or a ledger file")
    return report


__all__ = ["AuditReport", "CanaryAuditSpec", "Finding", "audit_artifact", "audit_canary", "audit_ledger", "audit_receipts", "check_epsilon", "cross_check",
           "load_receipts", "run_audit", "second_accountant_epsilon"]
