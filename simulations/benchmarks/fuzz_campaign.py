"""Property-based fuzzing (hypothesis) of every reader of untrusted input, and a campaign that counts the cases.

    python -m simulations.benchmarks.fuzz_campaign --examples 2000    # thousands of cases per target (~5-10 min on 2 cores)
                                                                      # -> the `fuzz` part of docs/results/reliability.json

Each target feeds one reader random and mutated inputs (mutations of a valid input: flipped, inserted,
deleted and truncated bytes; JSON members replaced, deleted or added; messages re-signed by the trusted
key so that the checks *behind* the signature are reached) and checks the property every reader must
have: it accepts the input, or it refuses it with the project's precise error (a `CodedError` or
`LlamdexError` naming the input and the rule), in bounded time and without changing any state. Any other
exception is a crash; an input that took longer than `HANG_S` is a hang. `tests/test_fuzz.py` runs the
same targets (a few hundred cases each by default, thousands under `-m slow`).

Targets: the artifact tar, the signature bundle, the signed statement (manifest), the safetensors header,
the expert spec, the public schema, the DP statement (each through `ArtifactVerifier`, re-signed so that
the content checks run, and through its own parser), receipts (`verify_receipt`, `ReceiptStore.add`),
ledger events, the ledger (rows altered in the file: `verify_chain` reports, never raises; page tokens),
both config loaders, and every RPC's request message of both services over real gRPC with mutual TLS.
"""

from __future__ import annotations

import argparse
import base64
import copy
import hashlib
import io
import json
import shutil
import sqlite3
import tarfile
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from protocol.errors import CodedError, LlamdexError
from simulations.benchmarks.results_md import command_line
from simulations.cli.common import add_out_arg

HANG_S = 10.0
# what the first runs of these targets found (each fixed, each case now refused precisely; the campaign's own counts
# below are of the fixed code)
FOUND_DURING_DEVELOPMENT = [
    "receipts: a receipt given as a non-JSON string or a non-object crashed verify_receipt / ReceiptStore.add (TypeError, JSONDecodeError)",
    "ledger events: the same for verify_ledger_event",
    "ledger file: a column altered to a non-number or bytes crashed Ledger.verify_chain (ValueError, TypeError) and Ledger.entries",
    "safetensors header: a tensor dtype that is an object crashed the artifact check (TypeError: unhashable)",
    "RPC ClientService.DeliverReceipt: a Receipt whose envelope_json is not JSON gave INTERNAL",
    "RPC every method: a request message that does not parse gave gRPC's bare INTERNAL instead of INVALID_ARGUMENT",
]
PRECISE = (CodedError, LlamdexError)

# --- strategies --------------------------------------------------------------------------------------------------

json_scalars = st.one_of(st.none(), st.booleans(), st.integers(min_value=-(2 ** 70), max_value=2 ** 70),
                         st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=40))
json_values = st.recursive(json_scalars, lambda kids: st.one_of(st.lists(kids, max_size=5), st.dictionaries(st.text(max_size=12), kids, max_size=5)),
                           max_leaves=20)


@st.composite
def mutated_bytes(draw: Any, valid: bytes) -> bytes:
    """`valid` with a few random edits: byte flips, insertions, deletions, a truncation or an extension."""
    data = bytearray(valid)
    for _ in range(draw(st.integers(1, 6))):
        op = draw(st.sampled_from(["flip", "insert", "delete", "truncate", "extend", "overwrite"]))
        pos = draw(st.integers(0, max(0, len(data) - 1)))
        if op == "flip" and data:
            data[pos] ^= draw(st.integers(1, 255))
        elif op == "insert":
            data[pos:pos] = draw(st.binary(min_size=1, max_size=16))
        elif op == "delete" and data:
            del data[pos:pos + draw(st.integers(1, 64))]
        elif op == "truncate":
            del data[pos:]
        elif op == "extend":
            data += draw(st.binary(min_size=1, max_size=64))
        elif op == "overwrite" and data:
            chunk = draw(st.binary(min_size=1, max_size=32))
            data[pos:pos + len(chunk)] = chunk
    return bytes(data)


def _paths(obj: Any, prefix: tuple = ()) -> list[tuple]:
    out = [prefix]
    if isinstance(obj, dict):
        for k, v in obj.items():
            out += _paths(v, prefix + (k,))
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            out += _paths(v, prefix + (i,))
    return out


@st.composite
def mutated_json(draw: Any, valid: Any) -> Any:
    """`valid` (a JSON value) with a few members replaced by random values, deleted, or added."""
    obj = copy.deepcopy(valid)
    for _ in range(draw(st.integers(1, 3))):
        paths = _paths(obj)
        path = draw(st.sampled_from(paths))
        if not path:
            obj = draw(json_values) if draw(st.integers(0, 9)) == 0 else obj
            continue
        parent = obj
        for k in path[:-1]:
            parent = parent[k]
        op = draw(st.sampled_from(["replace", "delete", "add"]))
        key = path[-1]
        if op == "replace":
            parent[key] = draw(json_values)
        elif op == "delete":
            del parent[key]
        elif isinstance(parent, dict):
            parent[draw(st.text(max_size=10))] = draw(json_values)
        else:
            parent.insert(key, draw(json_values))
    return obj


def dumps(v: Any) -> bytes:
    return json.dumps(v, allow_nan=True).encode("utf-8")


# --- outcome bookkeeping --------------------------------------------------------------------------------------------

@dataclass
class TargetStats:
    cases: int = 0
    accepted: int = 0
    refused: int = 0
    crashes: list[str] = field(default_factory=list)
    hangs: int = 0
    max_case_s: float = 0.0
    state_changes: int = 0

    def to_dict(self) -> dict[str, Any]:
        return {"cases": self.cases, "accepted": self.accepted, "refused_precisely": self.refused, "crashes": len(self.crashes),
                "crash_examples": self.crashes[:3], "hangs": self.hangs, "state_changes": self.state_changes,
                "max_case_s": round(self.max_case_s, 4)}


class Crash(AssertionError):
    """A reader raised something other than the project's precise errors, hung, or changed state."""


def expect_precise(stats: TargetStats, what: str, fn: Callable[[], Any], allowed: tuple = PRECISE) -> Any:
    """Runs one case: accepted, or refused with a precise error; anything else is recorded and raised as Crash."""
    t0 = time.perf_counter()
    stats.cases += 1
    try:
        out = fn()
        stats.accepted += 1
        return out
    except allowed as e:
        stats.refused += 1
        if not str(e).strip():
            stats.crashes.append(f"{what}: {type(e).__name__} with an empty message")
            raise Crash(stats.crashes[-1]) from e
        return e
    except Exception as e:  # noqa: BLE001 - the finding
        stats.crashes.append(f"{what}: {type(e).__name__}: {e}"[:300])
        raise Crash(stats.crashes[-1]) from e
    finally:
        dt = time.perf_counter() - t0
        stats.max_case_s = max(stats.max_case_s, dt)
        if dt > HANG_S:
            stats.hangs += 1


# --- the world the targets read from ---------------------------------------------------------------------------------

def build_world(root: Path) -> "World":
    from protocol.artifact import pack_artifact
    from protocol.keys import generate_keypair, load_private_key
    from protocol.tls import make_certs
    from provider_party.service.ledger import Ledger

    root.mkdir(parents=True, exist_ok=True)
    keys = {}
    for n in ("provider", "alice"):
        priv, pub, _ = generate_keypair(root / "keys", n)
        keys[n] = load_private_key(priv)
    tls = make_certs(root / "certs", {n: ["localhost", "127.0.0.1"] for n in ("provider", "alice", "orchestrator")})
    art = _small_artifact(root / "artifact", keys["alice"])
    files = {p.name: p.read_bytes() for p in art.iterdir()}
    ledger = Ledger(root / "ledger.db", keys["provider"])
    ledger.set_budget("alice", "titanic", 100.0)
    from protocol.artifact import ArtifactVerifier

    va = ArtifactVerifier([keys["alice"].public_key()]).verify(art)
    entry = ledger.append_upload("alice", "titanic", va.digest, va.dp, client_key=va.signer_fingerprint)
    ledger.append_deletion("alice", va.digest, deleted=("expert",))
    return World(root, keys, tls, art, pack_artifact(art), files, ledger, entry.receipt, ledger.events("budget")[0].receipt)


def _small_artifact(folder: Path, key: Any) -> Path:
    import torch

    from protocol.artifact import write_artifact
    from protocol.dp import DPStatement, compute_epsilon
    from protocol.encoding import FeatureEncoder
    from protocol.expert_spec import ExpertSpec, build_expert
    from protocol.schema import PublicSchema

    schema = PublicSchema.load(Path(__file__).resolve().parents[2] / "client_party" / "schemas" / "titanic.json")
    torch.manual_seed(0)
    spec = ExpertSpec(input_dim=FeatureEncoder(schema).dim, num_classes=schema.label.num_classes, hidden=(8, 4), schema_digest=schema.digest)
    dp = DPStatement(mechanism="dp-sgd", noise_multiplier=1.0, sample_rate=0.01, steps=100, max_grad_norm=1.0, accountant="rdp",
                     epsilon=compute_epsilon(1.0, 0.01, 100, 1e-5), delta=1e-5, dataset_size_bucket="1k-2k")
    return write_artifact(folder, build_expert(spec), schema, dp, key)


@dataclass
class World:
    root: Path
    keys: dict[str, Any]
    tls: dict[str, Any]
    artifact: Path
    tar: bytes
    files: dict[str, bytes]
    ledger: Any
    receipt: dict[str, Any]
    event: dict[str, Any]
    _n: int = 0

    def scratch(self) -> Path:
        self._n += 1
        p = self.root / "scratch" / str(self._n)
        p.mkdir(parents=True, exist_ok=True)
        return p


# --- artifact targets --------------------------------------------------------------------------------------------

def _verify_tar(w: World, stats: TargetStats, data: bytes) -> None:
    from protocol.artifact import ArtifactVerifier, unpack_artifact

    dest = w.scratch() / "unpacked"

    def run() -> Any:
        unpack_artifact(data, dest)
        return ArtifactVerifier([w.keys["alice"].public_key()]).verify(dest)
    out = expect_precise(stats, "unpack+verify tar", run)
    if isinstance(out, Exception) and dest.exists() and any(dest.iterdir()) and getattr(out, "code", "") not in _VERIFY_CODES_AFTER_UNPACK:
        stats.state_changes += 1
        raise Crash(f"a refused tar left files in {dest}: {sorted(p.name for p in dest.iterdir())}")
    shutil.rmtree(dest.parent, ignore_errors=True)


# codes raised by the verifier after a successful unpack (the unpacked files are then the caller's to delete)
_VERIFY_CODES_AFTER_UNPACK = {"BAD_BUNDLE", "UNTRUSTED_KEY", "BAD_SIGNATURE", "BAD_STATEMENT", "UNSUPPORTED_SERIALIZATION", "PATH_TRAVERSAL",
                              "DIGEST_MISMATCH", "SIZE_MISMATCH", "UNLISTED_FILE", "MISSING_FILE", "SPEC_INVALID", "SCHEMA_INVALID",
                              "SPEC_MISMATCH", "TENSOR_MISMATCH", "DP_INVALID", "FORBIDDEN_FILE", "FILE_TOO_LARGE"}


def _tar_of(files: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.USTAR_FORMAT) as t:
        for n, b in files.items():
            ti = tarfile.TarInfo(n)
            ti.size = len(b)
            t.addfile(ti, io.BytesIO(b))
    return buf.getvalue()


def _resigned_folder(w: World, files: dict[str, bytes]) -> Path:
    """An artifact folder with `files` (content mutated) signed again by the trusted key, so the content checks run."""
    from protocol.artifact import CONTENT_FILES, build_statement, make_bundle

    folder = w.scratch() / "art"
    folder.mkdir()
    for n, b in files.items():
        (folder / n).write_bytes(b)
    listed = {n: files[n] for n in CONTENT_FILES if n in files}
    (folder / "model.sig").write_text(json.dumps(make_bundle(build_statement(listed, "fuzz"), w.keys["alice"])))
    return folder


def _verify_folder(w: World, stats: TargetStats, folder: Path, what: str) -> None:
    from protocol.artifact import ArtifactVerifier

    expect_precise(stats, what, lambda: ArtifactVerifier([w.keys["alice"].public_key()]).verify(folder))
    shutil.rmtree(folder.parent, ignore_errors=True)


def target_artifact_tar(w: World, stats: TargetStats) -> Callable:
    @given(st.one_of(mutated_bytes(w.tar), st.binary(max_size=4096),
                     st.dictionaries(st.sampled_from(["dp.json", "expert.json", "schema.json", "expert.safetensors", "model.sig", "../x",
                                                      "a.pkl", "/etc/passwd", "sub/dir", ""]), st.binary(max_size=64), max_size=6).map(_safe_tar)))
    def run(data: bytes) -> None:
        _verify_tar(w, stats, data)
    return run


def _safe_tar(files: dict[str, bytes]) -> bytes:
    try:
        return _tar_of(files)
    except (ValueError, tarfile.TarError):
        return b""


def target_signature_bundle(w: World, stats: TargetStats) -> Callable:
    bundle = json.loads(w.files["model.sig"])

    @given(st.one_of(mutated_json(bundle).map(dumps), mutated_bytes(w.files["model.sig"])))
    def run(sig: bytes) -> None:
        folder = w.scratch() / "art"
        folder.mkdir()
        for n, b in w.files.items():
            (folder / n).write_bytes(sig if n == "model.sig" else b)
        _verify_folder(w, stats, folder, "signature bundle")
    return run


def target_manifest(w: World, stats: TargetStats) -> Callable:
    """The signed in-toto statement, mutated and signed again with the trusted key: the statement checks run."""
    from protocol.artifact import make_bundle

    bundle = json.loads(w.files["model.sig"])
    statement = json.loads(base64.b64decode(bundle["dsseEnvelope"]["payload"]))

    @given(mutated_json(statement))
    def run(st_: Any) -> None:
        folder = w.scratch() / "art"
        folder.mkdir()
        for n, b in w.files.items():
            (folder / n).write_bytes(b)
        try:
            sig = json.dumps(make_bundle(st_, w.keys["alice"]), allow_nan=True)
        except (ValueError, TypeError):     # not representable as canonical JSON: nothing to sign
            stats.cases += 1
            stats.refused += 1
            return
        (folder / "model.sig").write_text(sig)
        _verify_folder(w, stats, folder, "signed statement")
    return run


def _content_target(w: World, stats: TargetStats, name: str, what: str) -> Callable:
    valid = json.loads(w.files[name])

    @given(st.one_of(mutated_json(valid).map(dumps), mutated_bytes(w.files[name]), json_values.map(dumps)))
    def run(content: bytes) -> None:
        _verify_folder(w, stats, _resigned_folder(w, {**w.files, name: content}), what)
    return run


def target_spec(w: World, stats: TargetStats) -> Callable:
    return _content_target(w, stats, "expert.json", "expert spec")


def target_schema(w: World, stats: TargetStats) -> Callable:
    return _content_target(w, stats, "schema.json", "public schema")


def target_dp_statement(w: World, stats: TargetStats) -> Callable:
    return _content_target(w, stats, "dp.json", "dp statement")


def target_safetensors_header(w: World, stats: TargetStats) -> Callable:
    import struct

    data = w.files["expert.safetensors"]
    (n,) = struct.unpack("<Q", data[:8])
    header, body = json.loads(data[8:8 + n]), data[8 + n:]

    def with_header(h: Any) -> bytes:
        hb = dumps(h)
        return struct.pack("<Q", len(hb)) + hb + body

    @given(st.one_of(mutated_json(header).map(with_header), mutated_bytes(data), st.binary(max_size=256)))
    def run(tensors: bytes) -> None:
        from protocol.artifact import read_safetensors_header

        expect_precise(stats, "safetensors header", lambda: read_safetensors_header(tensors))
        _verify_folder(w, stats, _resigned_folder(w, {**w.files, "expert.safetensors": tensors}), "safetensors in artifact")
    return run


def target_parsers(w: World, stats: TargetStats) -> Callable:
    """The spec, schema and DP statement parsers on their own, with arbitrary JSON (also what `llamdex` reads from files)."""
    from protocol.dp import DPStatement
    from protocol.expert_spec import ExpertSpec
    from protocol.schema import PublicSchema

    valid = {n: json.loads(w.files[f]) for n, f in (("spec", "expert.json"), ("schema", "schema.json"), ("dp", "dp.json"))}
    parsers = {"spec": ExpertSpec.from_dict, "schema": PublicSchema.from_dict, "dp": DPStatement.from_dict}

    @given(st.sampled_from(sorted(parsers)), st.data())
    def run(which: str, data: Any) -> None:
        value = data.draw(st.one_of(mutated_json(valid[which]), json_values))
        expect_precise(stats, f"{which} parser", lambda: parsers[which](value))
    return run


# --- receipts, events, ledger ------------------------------------------------------------------------------------

def _resign(statement: Any, key: Any) -> dict[str, Any] | None:
    from protocol.canonical import canonical_json
    from protocol.dsse import INTOTO_PAYLOAD_TYPE, sign_envelope

    try:
        return sign_envelope(canonical_json(statement), INTOTO_PAYLOAD_TYPE, key).to_dict()
    except (ValueError, TypeError):
        return None


def target_receipts(w: World, stats: TargetStats) -> Callable:
    from client_party.receipt_store import ReceiptStore
    from protocol.receipts import verify_receipt

    statement = json.loads(base64.b64decode(w.receipt["payload"]))
    store_path = w.root / "receipts.db"
    store = ReceiptStore(store_path, "alice", w.keys["provider"].public_key())
    store.add(w.receipt)

    @given(st.one_of(mutated_json(statement).map(lambda s: _resign(s, w.keys["provider"])), mutated_json(w.receipt),
                     mutated_bytes(json.dumps(w.receipt).encode()).map(_loads_or_text), json_values))
    def run(env: Any) -> None:
        if env is None:
            return
        expect_precise(stats, "verify_receipt", lambda: verify_receipt(env, w.keys["provider"].public_key()))
        before = store.envelopes()
        out = expect_precise(stats, "ReceiptStore.add", lambda: store.add(env))
        after = store.envelopes()
        if after != before and not (isinstance(out, tuple) and out[0]):
            stats.state_changes += 1
            raise Crash("a refused receipt changed the receipt store")
        if after != before:   # a valid new receipt (re-signed by the real key) was stored: undo for the next case
            _reset_store(store_path, w.receipt, store)
    return run


def _reset_store(path: Path, receipt: dict, store: Any) -> None:
    con = sqlite3.connect(path, isolation_level=None)
    con.execute("DELETE FROM receipts WHERE sequence > 1")
    con.close()


def _loads_or_text(b: bytes) -> Any:
    try:
        return json.loads(b)
    except ValueError:
        return b.decode("utf-8", "replace")


def target_ledger_events(w: World, stats: TargetStats) -> Callable:
    from protocol.receipts import verify_ledger_event

    statement = json.loads(base64.b64decode(w.event["payload"]))

    @given(st.one_of(mutated_json(statement).map(lambda s: _resign(s, w.keys["provider"])), mutated_json(w.event), json_values))
    def run(env: Any) -> None:
        if env is None:
            return
        expect_precise(stats, "verify_ledger_event", lambda: verify_ledger_event(env, w.keys["provider"].public_key()))
    return run


_LEDGER_COLUMNS = ("prev_digest", "client_id", "dataset_id", "kind", "artifact_digest", "epsilon", "delta", "spent_before", "spent_after",
                   "budget", "delta_spent_before", "delta_spent_after", "delta_budget", "receipt_id", "receipt_seq", "receipt_digest", "receipt",
                   "created_at", "client_key", "entry_digest")


def target_ledger(w: World, stats: TargetStats) -> Callable:
    """Rows of the ledger file altered (any column, any value): verify_chain reports discrepancies and never raises;
    page tokens of `entries` are refused precisely."""
    from provider_party.service.ledger import Ledger

    src = w.ledger.path
    n_rows = w.ledger.head()[0]
    sql_values = st.one_of(st.none(), st.integers(-(2 ** 63), 2 ** 63 - 1), st.floats(allow_nan=False), st.text(max_size=60),
                           st.binary(max_size=40), st.sampled_from(["upload", "deletion", "budget", "revocation", "receipt_key", "sha256:" + "0" * 64]))

    @given(st.lists(st.tuples(st.integers(1, n_rows), st.sampled_from(_LEDGER_COLUMNS), sql_values), min_size=1, max_size=3),
           st.one_of(st.none(), st.text(max_size=80), st.binary(max_size=60).map(lambda b: base64.urlsafe_b64encode(b).decode())))
    def run(edits: list, token: Any) -> None:
        d = w.scratch()
        path = d / "ledger.db"
        shutil.copy2(src, path)
        con = sqlite3.connect(path, isolation_level=None)
        con.execute("DROP TRIGGER entries_no_update")
        for seq, col, val in edits:
            try:
                con.execute(f"UPDATE entries SET {col} = ? WHERE seq = ?", (val, seq))
            except sqlite3.IntegrityError:   # NOT NULL / UNIQUE / CHECK: the file cannot hold it
                pass
        con.close()
        lg = Ledger(path)
        found = expect_precise(stats, "Ledger.verify_chain", lambda: lg.verify_chain(w.keys["provider"].public_key()), allowed=())
        if not isinstance(found, list):
            raise Crash(f"verify_chain returned {found!r}")
        if token is not None:
            expect_precise(stats, "Ledger.entries(page_token)", lambda: lg.entries("alice", page_token=token))
        shutil.rmtree(d, ignore_errors=True)
    return run


# --- config loaders ----------------------------------------------------------------------------------------------

def _provider_toml(w: World) -> str:
    return f"""[provider]
id = "provider"
listen = "127.0.0.1:0"
key = "{w.root}/keys/provider.key"
state = "{w.root}/state"
preload = false

[tls]
ca = "{w.root}/certs/ca.pem"
cert = "{w.root}/certs/provider.pem"
key = "{w.root}/certs/provider.key"

[limits]
max_artifact_bytes = 1048576

[[clients]]
id = "alice"
public_key = "{w.root}/keys/alice.pub"
epsilon_budget = 4.0
budgets = {{ titanic = 2.0 }}
"""


def _client_toml(w: World) -> str:
    return f"""[client]
id = "alice"
key = "{w.root}/keys/alice.key"
workspace = "{w.root}/ws"
max_epsilon = 2.0
datasets = ["titanic"]

[provider]
address = "127.0.0.1:50051"
public_key = "{w.root}/keys/provider.pub"
"""


def target_configs(w: World, stats: TargetStats) -> Callable:
    from client_party.config import load_client_config
    from provider_party.service.config import load_provider_config

    texts = {"provider": _provider_toml(w), "client": _client_toml(w)}
    loaders = {"provider": load_provider_config, "client": load_client_config}
    lines = st.sampled_from(["", "[provider]", "[limits]", "[[clients]]", "[tls]", "id = 3", "max_chunk_bytes = 0", "max_workers = -1",
                             "epsilon_budget = \"nan\"", "budgets = { \"../x\" = 1 }", "public_key = \"/nonexistent\"", "preset = 5",
                             "listen = 7", "revoked_keys = [1]", "max_epsilon = \"x\"", "datasets = 3", "chunk_bytes = \"big\"",
                             "timeout_s = []", "id = \"\"", "allowed_callers = 1", "x = 1", "receipt_keys = \"/nope.json\""])

    @given(st.sampled_from(sorted(loaders)), st.data())
    def run(which: str, data: Any) -> None:
        valid = texts[which]
        text = data.draw(st.one_of(mutated_bytes(valid.encode()).map(lambda b: b.decode("utf-8", "replace")),
                                   st.lists(lines, max_size=6).map(lambda ls: valid + "\n".join(ls) + "\n"),
                                   st.lists(lines, max_size=10).map("\n".join), st.text(max_size=200)))
        path = w.scratch() / f"{which}.toml"
        path.write_text(text)
        expect_precise(stats, f"{which} config loader", lambda: loaders[which](path))
        shutil.rmtree(path.parent, ignore_errors=True)
    return run


# --- RPC requests over real gRPC ------------------------------------------------------------------------------------

PROVIDER_METHODS = {
    "Hello": ("HelloRequest", "unary"), "GetUploadStatus": ("GetUploadStatusRequest", "unary"), "Customize": ("CustomizeRequest", "unary"),
    "WatchJob": ("WatchJobRequest", "server_stream"), "Ask": ("AskRequest", "unary"), "GetLedger": ("GetLedgerRequest", "unary"),
    "Forget": ("ForgetRequest", "unary"), "UploadExpert": ("UploadRequest", "client_stream"),
}
CLIENT_METHODS = {
    "Hello": ("ClientHelloRequest", "unary"), "TrainExpert": ("TrainExpertRequest", "unary"), "Customize": ("ClientCustomizeRequest", "server_stream"),
    "Evaluate": ("EvaluateRequest", "unary"), "DeliverReceipt": ("DeliverReceiptRequest", "unary"),
    "DeliverJobResult": ("DeliverJobResultRequest", "unary"), "ListReceipts": ("ListReceiptsRequest", "unary"),
}
# statuses a refusal may carry (INTERNAL and UNKNOWN are crashes; UNAVAILABLE/DEADLINE are hangs or transport failures)
PRECISE_STATUSES = {"INVALID_ARGUMENT", "NOT_FOUND", "PERMISSION_DENIED", "UNAUTHENTICATED", "FAILED_PRECONDITION", "RESOURCE_EXHAUSTED",
                    "OUT_OF_RANGE", "DATA_LOSS", "ABORTED", "ALREADY_EXISTS"}


class RpcWorld:
    """Both services on loopback with mutual TLS (the provider without a base model: no call here needs one)."""

    def __init__(self, w: World):
        from dataclasses import replace

        from client_party.config import ClientConfig
        from client_party.service import ClientServer
        from protocol.tls import open_channel
        from provider_party.service.config import ProviderConfig, ProviderLimits, RegisteredClient
        from provider_party.service.server import ProviderServer

        limits = replace(ProviderLimits(), max_requests_per_second=1e6)   # the fuzzer is not a flood to throttle
        cfg = ProviderConfig(provider_id="provider", listen="127.0.0.1:0", key=w.root / "keys" / "provider.key", state=w.root / "rpc-state",
                             connectors=w.root / "connectors", preload=False, tls=w.tls["provider"], limits=limits,
                             clients=(RegisteredClient("alice", w.keys["alice"].public_key()),))
        self.provider = ProviderServer(cfg).start()
        ccfg = ClientConfig(client_id="alice", key=w.root / "keys" / "alice.key", workspace=w.root / "rpc-ws", listen="127.0.0.1:0",
                            provider_address=self.provider.address, provider_public_key=w.root / "keys" / "provider.pub", tls=w.tls["alice"],
                            datasets=("titanic",))
        self.client = ClientServer(ccfg).start()
        self.to_provider = open_channel(self.provider.address, w.tls["alice"])
        self.to_client = open_channel(self.client.address, w.tls["orchestrator"])
        self.w = w

    def state(self) -> tuple:
        party = self.provider.servicer.party
        db = Path(party.config.state) / "state.db"
        con = sqlite3.connect(db)
        try:
            counts = tuple(con.execute(f"SELECT COUNT(*) FROM {t}").fetchone()[0] for t in ("uploads", "nonces", "jobs", "forgets"))
        finally:
            con.close()
        store = self.client.party.store
        return (party.ledger.head(), counts, tuple(e.artifact_digest for e in party.experts.live()), len(store.envelopes()),
                sorted(p.name for p in (Path(self.client.party.workspace) / "jobs").iterdir()))

    def call(self, service: str, method: str, kind: str, payload: bytes | list[bytes]) -> tuple[str, str | None, str]:
        ch = self.to_provider if service == "provider" else self.to_client
        name = f"/llamdex.v1.{'ProviderService' if service == 'provider' else 'ClientService'}/{method}"
        ident = lambda b: b  # noqa: E731 - raw bytes on the wire
        import grpc

        try:
            if kind == "unary":
                ch.unary_unary(name, request_serializer=ident, response_deserializer=ident)(payload, timeout=HANG_S)
            elif kind == "server_stream":
                for _ in ch.unary_stream(name, request_serializer=ident, response_deserializer=ident)(payload, timeout=HANG_S):
                    pass
            else:
                ch.stream_unary(name, request_serializer=ident, response_deserializer=ident)(iter(payload), timeout=HANG_S)
            return ("OK", None, "")
        except grpc.RpcError as e:
            from protocol.rpc_errors import error_code

            return (e.code().name, error_code(e), e.details() or "")

    def close(self) -> None:
        self.to_provider.close()
        self.to_client.close()
        self.client.stop(0)
        self.provider.stop(0)


def _valid_requests(w: World) -> dict[tuple[str, str], Any]:
    """One valid-looking message per method (mutation seeds)."""
    from protocol.request_auth import FORGET_METHOD, UPLOAD_METHOD, forget_body, sign_request, upload_body
    from protocol.rpc.llamdex.v1 import client_pb2, common_pb2, provider_pb2

    h = provider_pb2.UploadHeader(upload_id="u" * 24, dataset_id="titanic", artifact_name="expert", total_bytes=len(w.tar),
                                  artifact_sha256=hashlib.sha256(w.tar).hexdigest())
    h.auth.CopyFrom(common_pb2.RequestSignature(**sign_request(w.keys["alice"], "alice", UPLOAD_METHOD, upload_body(h)).to_proto_kwargs()))
    f = provider_pb2.ForgetRequest(artifact_digest="sha256:" + "a" * 64)
    f.auth.CopyFrom(common_pb2.RequestSignature(**sign_request(w.keys["alice"], "alice", FORGET_METHOD, forget_body(f)).to_proto_kwargs()))
    from protocol.wire import receipt_message

    return {
        ("provider", "Hello"): provider_pb2.HelloRequest(client_version="x"),
        ("provider", "GetUploadStatus"): provider_pb2.GetUploadStatusRequest(upload_id="u" * 24),
        ("provider", "Customize"): provider_pb2.CustomizeRequest(artifact_digest="sha256:" + "a" * 64, preset="tiny"),
        ("provider", "WatchJob"): provider_pb2.WatchJobRequest(job_id="0" * 32),
        ("provider", "Ask"): provider_pb2.AskRequest(questions=["Did she survive?"], artifact_digest="sha256:" + "a" * 64),
        ("provider", "GetLedger"): provider_pb2.GetLedgerRequest(page_size=10, page_token=""),
        ("provider", "Forget"): f,
        ("provider", "UploadExpert"): [provider_pb2.UploadRequest(header=h),
                                       provider_pb2.UploadRequest(chunk=provider_pb2.UploadChunk(offset=0, data=w.tar[:512],
                                                                                                 sha256=hashlib.sha256(w.tar[:512]).hexdigest()))],
        ("client", "Hello"): client_pb2.ClientHelloRequest(),
        ("client", "TrainExpert"): client_pb2.TrainExpertRequest(dataset_id="titanic", max_epsilon=50.0),
        ("client", "Customize"): client_pb2.ClientCustomizeRequest(artifact_digest="sha256:" + "b" * 64),
        ("client", "Evaluate"): client_pb2.EvaluateRequest(artifact_digest="sha256:" + "b" * 64, max_questions=2),
        ("client", "DeliverReceipt"): client_pb2.DeliverReceiptRequest(receipt=receipt_message(w.receipt)),
        ("client", "DeliverJobResult"): client_pb2.DeliverJobResultRequest(result=common_pb2.JobResult(job_id="j", client_id="mallory")),
        ("client", "ListReceipts"): client_pb2.ListReceiptsRequest(),
    }


def target_rpc_requests(w: World, stats: TargetStats, rpc: RpcWorld) -> Callable:
    """Random and mutated request messages to every method of both services: a precise status, no state change."""
    valid = _valid_requests(w)
    methods = sorted(valid)
    kinds = {("provider", m): k for m, (_, k) in PROVIDER_METHODS.items()} | {("client", m): k for m, (_, k) in CLIENT_METHODS.items()}

    def ser(m: Any) -> bytes:
        return m.SerializeToString()

    @given(st.sampled_from(methods), st.data())
    def run(which: tuple[str, str], data: Any) -> None:
        seed = valid[which]
        kind = kinds[which]
        if kind == "client_stream":
            payload = [data.draw(st.one_of(mutated_bytes(ser(m)), st.binary(max_size=300), st.just(ser(m)))) for m in seed]
            payload += data.draw(st.lists(st.binary(max_size=200), max_size=2))
        else:
            payload = data.draw(st.one_of(mutated_bytes(ser(seed)), st.binary(max_size=300)))
        before = rpc.state()
        t0 = time.perf_counter()
        stats.cases += 1
        status, code, details = rpc.call(which[0], which[1], kind, payload)
        dt = time.perf_counter() - t0
        stats.max_case_s = max(stats.max_case_s, dt)
        after = rpc.state()
        where = f"{which[0]}.{which[1]}"
        if status == "OK":
            stats.accepted += 1
        elif status in PRECISE_STATUSES and code and details:
            stats.refused += 1
        else:
            if status == "DEADLINE_EXCEEDED":
                stats.hangs += 1
            stats.crashes.append(f"{where}: {status} {code} {details[:200]}")
            raise Crash(stats.crashes[-1])
        if after != before and not _allowed_change(which, status, before, after):
            stats.state_changes += 1
            stats.crashes.append(f"{where}: state changed by a {status} call: {before} -> {after}")
            raise Crash(stats.crashes[-1])
    return run


def _allowed_change(which: tuple[str, str], status: str, before: tuple, after: tuple) -> bool:
    """An accepted call may change what it is for: a DeliverJobResult stores a result, an UploadExpert whose header
    verified opens an upload and records its nonce."""
    signed = which in (("provider", "UploadExpert"), ("provider", "Forget"))
    if status != "OK":   # a correctly signed request spends its nonce (replay cache) even when it is then refused; nothing else
        only_nonce = before[0] == after[0] and before[2:] == after[2:] and before[1][0] == after[1][0] and before[1][2:] == after[1][2:]
        opened = which == ("provider", "UploadExpert") and before[0] == after[0] and before[2:] == after[2:]
        return signed and (only_nonce or opened)
    return which in (("client", "DeliverJobResult"), ("provider", "UploadExpert"), ("client", "DeliverReceipt"))


# --- the campaign -------------------------------------------------------------------------------------------------

TARGETS: dict[str, Callable[..., Callable]] = {
    "artifact tar": target_artifact_tar, "signature bundle": target_signature_bundle, "signed statement (manifest)": target_manifest,
    "safetensors header": target_safetensors_header, "expert spec": target_spec, "public schema": target_schema,
    "DP statement": target_dp_statement, "spec/schema/DP parsers": target_parsers, "receipts": target_receipts,
    "ledger events": target_ledger_events, "ledger file": target_ledger, "config loaders": target_configs,
}


def run_target(build: Callable[..., Callable], w: World, examples: int, seed: int = 0, rpc: RpcWorld | None = None) -> TargetStats:
    """Runs one target for `examples` cases; returns its statistics (crashes are collected, not raised)."""
    from hypothesis import Phase, seed as hseed

    stats = TargetStats()
    attempt = 0
    while stats.cases < examples and attempt < 50:
        n_before = stats.cases
        fn = build(w, stats, rpc) if rpc is not None else build(w, stats)   # a fresh test each time (a crash ends one)
        run = settings(max_examples=examples - stats.cases, deadline=None, database=None, phases=(Phase.generate,),
                       suppress_health_check=list(HealthCheck), report_multiple_bugs=False)(fn)
        found = len(stats.crashes)
        try:
            hseed(seed + attempt)(run)()
        except Exception:  # noqa: BLE001 - a Crash (or hypothesis' FlakyFailure around one), recorded in stats: go on with another seed
            if len(stats.crashes) == found:
                raise      # not a finding: a fault of the harness itself
        attempt += 1
        if stats.cases == n_before:
            break
    return stats


def run_campaign(examples: int, root: Path | None = None, seed: int = 0) -> dict[str, Any]:
    from tqdm import tqdm

    tmp = Path(tempfile.mkdtemp(prefix="llamdex-fuzz-")) if root is None else root
    w = build_world(tmp)
    out: dict[str, Any] = {}
    names = list(TARGETS) + ["RPC requests (both services)"]
    for name in tqdm(names, desc="fuzz targets", unit="target"):
        t0 = time.perf_counter()
        if name.startswith("RPC"):
            rpc = RpcWorld(w)
            try:
                stats = run_target(target_rpc_requests, w, examples, seed, rpc)
            finally:
                rpc.close()
        else:
            stats = run_target(TARGETS[name], w, examples, seed)
        out[name] = {**stats.to_dict(), "seconds": round(time.perf_counter() - t0, 1)}
    shutil.rmtree(tmp, ignore_errors=True)
    return out


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m simulations.benchmarks.fuzz_campaign", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--examples", type=int, default=2000, help="cases per target (default 2000)")
    ap.add_argument("--seed", type=int, default=0, help="seed of the hostile inputs generated for each target (default 0)")
    add_out_arg(ap, default=None, help="folder of reliability.json and RESULTS.md's section (default: docs/results)",
                aliases=("--results-dir",))
    return ap


def main(argv: list[str] | None = None) -> int:
    a = parser().parse_args(argv)
    from simulations.benchmarks.reliability_report import merge_and_render

    t0 = time.perf_counter()
    res = run_campaign(a.examples, seed=a.seed)
    merge_and_render("fuzz", {"examples_per_target": a.examples, "seed": a.seed, "seconds": round(time.perf_counter() - t0, 1),
                              "command": command_line("python -m simulations.benchmarks.fuzz_campaign", argv),
                              "found_during_development": FOUND_DURING_DEVELOPMENT, "targets": res}, a.out)
    bad = {k: v for k, v in res.items() if v["crashes"] or v["hangs"] or v["state_changes"]}
    print(json.dumps(res, indent=1))
    return 1 if bad else 0


if __name__ == "__main__":
    raise SystemExit(main())
