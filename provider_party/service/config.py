"""The provider's configuration: a TOML file (paths relative to it) whose values flags may override.

    [provider]
    id = "provider"
    listen = "127.0.0.1:50051"
    key = "keys/provider.key"          # signs receipts
    receipt_keys = ""                  # optional: the receipt key list after a rotation (protocol.receipt_keys)
    state = "provider-state"           # ledger, uploads, experts
    connectors = ""                    # connector store ("" = $LLAMDEX_HOME/connectors)
    base_model = "embedded"            # or a HF name/path; "random-init:1B" is a benchmarking-only random model
    device = "cpu"                     # "cpu" (default), "cuda" or "cuda:N": base LLM, connectors and experts
    preset = "quick"                   # connector training preset
    preload = true                     # warm up at start (base LLM, stored connectors, live experts); ready after it
    log_level = "info"                 # debug | info | warning | error (--log-level and LLAMDEX_LOG_LEVEL win)
    drain_grace_s = 10                 # on SIGTERM, how long running calls get to finish

    # allow_retrain = false            # may a client ask to retrain connectors that exist

    [tls]                              # mutual TLS: all three files
    ca = "certs/ca.pem"
    cert = "certs/provider.pem"
    key = "certs/provider.key"
    # plaintext = true                 # instead of the files: loopback only, for development

    [limits]                           # every limit is explicit; see ProviderLimits
    max_artifact_bytes = 268435456
    batch_max_wait_ms = 5              # Ask: how long a question waits for other clients' to share its pass
    batch_max_rows = 32                # Ask: rows (questions, of any clients and schemas) per forward pass
    batch_max_queued_rows = 512        # Ask: rows waiting for a pass; beyond it Ask is refused (QUEUE_FULL)
    ask_deadline_s = 120               # Ask: from arrival to answer, else DEADLINE_EXCEEDED
    max_resident_experts = 256         # verified experts kept loaded (least recently used leave first)

    [[clients]]                        # only registered clients are served
    id = "alice"                       # = the CN of its TLS certificate
    public_key = "keys/alice.pub"      # verifies its artifacts and signed requests (one key per client)
    epsilon_budget = 4.0               # per dataset, basic composition ("inf" = unbounded)
    delta_budget = 1e-4                # optional, below 1
    callback = "127.0.0.1:50061"       # optional: its ClientService (HOST:PORT), for job results
    budgets = { titanic = 2.0 }        # optional per-dataset epsilon budgets
    revoked_keys = [{ key = "keys/alice-old.pub", reason = "laptop lost" }]   # optional: refused from now on

Unknown tables or keys, a half-filled `[tls]` and values of the wrong type are refused with the key named, and so
are settings that contradict each other: two clients with one public key, a client whose public_key is among its
own revoked_keys.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from protocol.errors import CodedError
from protocol.keys import PublicKey, fingerprint, load_public_key
from protocol.tls import TLSFiles, TransportError, split_address
from protocol.toml_config import ConfigError, boolean, check_keys, fail, read_toml, section, string, tls_section

MiB = 1 << 20
ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
TOP_LEVEL = {"provider", "tls", "limits", "clients"}
PROVIDER_KEYS = {"id", "listen", "key", "state", "connectors", "base_model", "device", "preset", "preload", "allow_retrain", "log_level",
                 "drain_grace_s", "receipt_keys"}


ZERO_ALLOWED_LIMITS = {"batch_max_wait_ms", "background_wait_s"}
GRPC_MAX_MESSAGE_BYTES = 2**31 - 1   # gRPC takes message limits as a signed 32-bit integer


@dataclass(frozen=True)
class ProviderLimits:
    """Every limit the provider enforces (reported by Hello)."""

    max_message_bytes: int = 4 * MiB
    max_artifact_bytes: int = 256 * MiB
    max_chunk_bytes: int = 2 * MiB
    max_batch_questions: int = 64
    max_question_chars: int = 4000
    # ... and tokens: what a pass costs (its attention grows with the square of the longest row). 4000 characters of
    # English are ~1000 tokens; of CJK or math letters, 12,000, which held the single pass thread for minutes
    max_question_tokens: int = 1024
    signature_max_skew_ms: int = 300_000
    upload_ttl_s: int = 24 * 3600
    max_open_uploads: int = 4
    max_page_size: int = 1000
    max_requests_per_second: float = 50.0
    max_job_queue: int = 8
    max_workers: int = 16            # gRPC server threads
    reserved_workers: int = 4        # ... that long-lived streams never take: unary calls and health always find one
    max_streams_per_client: int = 4  # UploadExpert and WatchJob streams one client holds open at once (TOO_MANY_STREAMS)
    upload_header_timeout_s: float = 30.0   # an UploadExpert stream that sends no header within this long is cancelled
    callback_timeout_s: float = 10.0  # delivering a job result to a client
    max_jobs_per_client: int = 2      # connector jobs a client may have queued or running
    max_upload_streams_per_client: int = 2   # UploadExpert streams of one client open at once
    max_upload_streams: int = 4       # UploadExpert streams open at once in all (the others: TOO_MANY_UPLOADS, retry later)
    max_upload_stream_s: float = 900.0       # an upload stream is cut (what arrived is kept) after this long
    # Ask calls admitted at once; the others wait ... The load test on 2 CPU cores (docs/DESIGN_NOTES.md): with 8, admitted
    # p99 19x the unloaded p50; with 1, 7.2x before uploads yielded to Ask passes and 2.1x after. 1 keeps admitted calls
    # closest to their unloaded latency; raise it for throughput (and on a GPU): admitted calls of any clients and
    # schemas then share passes (MixedBatcher).
    max_concurrent_asks: int = 1
    # ... at most this long, then RESOURCE_EXHAUSTED OVERLOADED (the client library asks again after a pause). Short,
    # because a waiting call holds a server thread: with 0.5 s, 64 askers kept most of the 16 busy and admitted calls
    # queued 1.5 s for one (load test, 2 cores)
    ask_admission_wait_s: float = 0.05
    max_asks_per_client: int = 2      # Ask calls of one client admitted or waiting at once
    # an upload's verification waits while an Ask pass runs, at most this long (0: never waits); see admission.InteractiveFirst
    background_wait_s: float = 0.5
    # Ask serving (provider_party/model/batching.py): concurrent Asks of any clients and schemas share passes
    batch_max_wait_ms: float = 5.0    # the oldest waiting Ask waits at most this long for others to join its pass (0: never waits)
    batch_max_rows: int = 32          # rows per pass; larger passes raise throughput on a GPU, latency on a CPU
    batch_max_queued_rows: int = 512  # rows waiting for a pass; an Ask beyond it is refused (QUEUE_FULL) instead of growing memory
    ask_deadline_s: float = 120.0     # from an Ask's arrival to its answer; one not started by then is dropped (DEADLINE_EXCEEDED)
    max_resident_experts: int = 256   # verified experts kept in memory (LRU); a miss re-verifies the stored artifact

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "ProviderLimits":
        known = {f.name: f.type for f in fields(cls)}
        unknown = set(d) - set(known)
        if unknown:
            raise ConfigError("BAD_CONFIG", f"[limits]: unknown keys {sorted(unknown)}; known: {sorted(known)}")
        out = cls(**d)
        for f in fields(out):
            v = getattr(out, f.name)
            zero_ok = f.name in ZERO_ALLOWED_LIMITS
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not (v >= 0 if zero_ok else v > 0):
                raise ConfigError("BAD_CONFIG", f"[limits] {f.name} must be a {'non-negative' if zero_ok else 'positive'} number, got {v!r}")
            if f.type in ("int", int) and not isinstance(v, int):   # counts, bytes, threads: 0.5 of a thread started a server
                raise ConfigError("BAD_CONFIG", f"[limits] {f.name} must be a whole number, got {v!r}")
        if out.max_message_bytes > GRPC_MAX_MESSAGE_BYTES:
            raise ConfigError("BAD_CONFIG", f"[limits] max_message_bytes must be at most {GRPC_MAX_MESSAGE_BYTES} (gRPC's limit), "
                              f"got {out.max_message_bytes}")
        if out.reserved_workers >= out.max_workers:
            raise ConfigError("BAD_CONFIG", f"[limits] reserved_workers ({out.reserved_workers}) must be below max_workers ({out.max_workers}): "
                              "the difference is how many UploadExpert/WatchJob streams may be open at once")
        if out.max_chunk_bytes + 64 * 1024 > out.max_message_bytes:
            raise ConfigError("BAD_CONFIG", "[limits] max_chunk_bytes + 64 KiB must fit in max_message_bytes")
        if out.batch_max_queued_rows < 2 * out.max_batch_questions:
            raise ConfigError("BAD_CONFIG", f"[limits] batch_max_queued_rows ({out.batch_max_queued_rows}) must be at least 2 × max_batch_questions "
                              f"({2 * out.max_batch_questions}): an Ask with include_base adds that many rows, and a smaller queue could never take it")
        return out

    def batching(self) -> Any:
        """The Ask batcher's settings (provider_party.model.batching.BatchingLimits)."""
        from provider_party.model.batching import BatchingLimits

        return BatchingLimits(max_wait_ms=float(self.batch_max_wait_ms), max_batch_rows=int(self.batch_max_rows),
                              max_queued_rows=int(self.batch_max_queued_rows), deadline_s=float(self.ask_deadline_s))


@dataclass(frozen=True)
class RegisteredClient:
    client_id: str
    public_key: PublicKey
    epsilon_budget: float = 4.0
    delta_budget: float = math.inf
    budgets: dict[str, float] = field(default_factory=dict)
    callback: str | None = None
    revoked_keys: tuple[tuple[str, str], ...] = ()   # (key fingerprint, reason) revoked by the operator

    @property
    def key_fingerprint(self) -> str:
        return fingerprint(self.public_key)

    def budget_for(self, dataset_id: str) -> tuple[float, float]:
        return float(self.budgets.get(dataset_id, self.epsilon_budget)), float(self.delta_budget)


def positive_number(v: Any, where: str) -> float:
    if isinstance(v, str) and v.lower() in ("inf", "unbounded"):
        return math.inf
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not v > 0:
        raise ConfigError("BAD_CONFIG", f"{where} must be a positive number or \"inf\", got {v!r}")
    return float(v)


def check_id(value: Any, what: str) -> str:
    if not isinstance(value, str) or not ID_RE.fullmatch(value):
        raise ConfigError("BAD_CONFIG", f"{what} {value!r} must match {ID_RE.pattern} (it names folders and certificates)")
    return value


@dataclass(frozen=True)
class ProviderConfig:
    provider_id: str = "provider"
    listen: str = "127.0.0.1:50051"
    key: Path = Path("provider.key")
    state: Path = Path("provider-state")
    connectors: Path | None = None
    base_model: str = "embedded"
    device: str = "cpu"              # cpu | cuda | cuda:N (checked against the machine by check_device)
    preset: Any = "quick"            # a PRESETS name or a Preset
    preload: bool = True
    tls: TLSFiles | None = None
    plaintext: bool = False
    limits: ProviderLimits = field(default_factory=ProviderLimits)
    clients: tuple[RegisteredClient, ...] = ()
    allow_retrain: bool = False
    port_file: Path | None = None   # written with the bound address once serving
    log_level: str | None = None    # None: the serve verb's default (info)
    drain_grace_s: float = 10.0     # on SIGTERM, running calls get this long to finish
    receipt_keys: Path | None = None   # the receipt key list (protocol.receipt_keys), published by Hello after a rotation

    def client(self, client_id: str) -> RegisteredClient | None:
        for c in self.clients:
            if c.client_id == client_id:
                return c
        return None

    def with_overrides(self, **kw: Any) -> "ProviderConfig":
        return replace(self, **{k: v for k, v in kw.items() if v is not None})


def parse_client(d: dict[str, Any], base: Path, i: int) -> RegisteredClient:
    where = f"[[clients]] #{i + 1}"
    check_keys(d, {"id", "public_key", "epsilon_budget", "delta_budget", "budgets", "callback", "revoked_keys"}, where)
    cid = check_id(d.get("id"), f"{where} id")
    pk = d.get("public_key")
    if not isinstance(pk, str):
        raise ConfigError("BAD_CONFIG", f"{where} ({cid}): public_key (a PEM file) is required")
    key = load_public_key(pk if pk.lstrip().startswith("-----BEGIN") else base / pk)
    raw_budgets = d.get("budgets") or {}
    if not isinstance(raw_budgets, dict):
        raise fail(where, f"budgets must be a table {{ DATASET = EPSILON, ... }}, got {raw_budgets!r}")
    budgets = {check_id(k, f"{where} budgets key"): positive_number(v, f"{where} budgets.{k}") for k, v in raw_budgets.items()}
    string(d, "callback", where)
    callback = d.get("callback") or None
    if callback is not None:   # a job result would go nowhere, found only when the first job ends
        try:
            split_address(callback)
        except TransportError:
            raise fail(where, f"({cid}) callback must be the client's HOST:PORT, got {callback!r}") from None
    delta_budget = positive_number(d.get("delta_budget", "inf"), f"{where} delta_budget")
    if 1 <= delta_budget < math.inf:
        raise fail(where, f"({cid}) delta_budget must be below 1 (δ is a probability), got {delta_budget}; leave it out for no δ budget")
    revoked = _revoked_keys(d.get("revoked_keys", []), base, f"{where} ({cid}) revoked_keys")
    if fingerprint(key) in {fp for fp, _ in revoked}:
        raise fail(where, f"({cid}) public_key is also in its revoked_keys: every request it signs would be refused; "
                          "register the client's new key as public_key")
    return RegisteredClient(cid, key, positive_number(d.get("epsilon_budget", 4.0), f"{where} epsilon_budget"),
                            delta_budget, budgets, callback, revoked)


def _revoked_keys(items: Any, base: Path, where: str) -> tuple[tuple[str, str], ...]:
    """`revoked_keys`: a list of public keys (a PEM file or PEM text), each optionally `{ key = ..., reason = ... }`."""
    if not isinstance(items, list):
        raise ConfigError("BAD_CONFIG", f"{where} must be a list of public keys or {{ key, reason }} tables, got {items!r}")
    out = []
    for i, item in enumerate(items):
        spec, reason = (item, "revoked by the provider's operator") if isinstance(item, str) else (
            (item.get("key"), item.get("reason", "revoked by the provider's operator")) if isinstance(item, dict) else (None, None))
        if not isinstance(spec, str) or not isinstance(reason, str) or (isinstance(item, dict) and set(item) - {"key", "reason"}):
            raise ConfigError("BAD_CONFIG", f"{where}[{i}] must be a public key (file or PEM) or {{ key = ..., reason = ... }}, got {item!r}")
        out.append((fingerprint(load_public_key(spec if spec.lstrip().startswith("-----BEGIN") else base / spec)), reason))
    return tuple(out)


def preset_setting(v: Any) -> Any:
    """A preset name ("quick", "default"), or an inline table of Preset fields (e.g. a tiny preset for tests)."""
    from provider_party.model.connector_training import PRESETS, Preset

    if isinstance(v, str):
        if v not in PRESETS:
            raise ConfigError("BAD_CONFIG", f"[provider] preset {v!r} is not one of {sorted(PRESETS)} (or give an inline table of Preset fields)")
        return v
    if isinstance(v, dict):
        try:
            return Preset.from_fields(v)
        except ValueError as e:
            raise ConfigError("BAD_CONFIG", f"[provider] preset table: {e}") from None
    raise ConfigError("BAD_CONFIG", f"[provider] preset must be a name or a table, got {v!r}")


LOG_LEVELS = ("debug", "info", "warning", "error")


def _log_level(v: Any) -> str | None:
    if v is None:
        return None
    if not isinstance(v, str) or v.lower() not in LOG_LEVELS:
        raise ConfigError("BAD_CONFIG", f"[provider] log_level must be one of {list(LOG_LEVELS)}, got {v!r}")
    return v.lower()


def check_device(value: Any, where: str = "[provider] device") -> str:
    """A device this machine has (cpu, cuda, cuda:N), or a BAD_CONFIG error naming the setting and the fix."""
    from provider_party.model.base_llm import resolve_device

    if not isinstance(value, str):
        raise ConfigError("BAD_CONFIG", f"{where} must be a string (cpu, cuda or cuda:N), got {value!r}")
    try:
        return str(resolve_device(value))
    except CodedError as e:
        raise ConfigError("BAD_CONFIG", f"{where}: {str(e).split('] ', 1)[-1]}") from None


def check_clients(clients: tuple[RegisteredClient, ...], where: str) -> tuple[RegisteredClient, ...]:
    """Each client id once: a second registration would silently replace the first's key and budget."""
    ids = [c.client_id for c in clients]
    if len(set(ids)) != len(ids):
        raise ConfigError("BAD_CONFIG", f"{where}: a client id is registered twice: {ids}")
    by_key: dict[str, str] = {}
    for c in clients:   # whoever holds the key could sign as either, and spend the other's budget
        other = by_key.setdefault(c.key_fingerprint, c.client_id)
        if other != c.client_id:
            raise ConfigError("BAD_CONFIG", f"{where}: clients {other!r} and {c.client_id!r} are registered with one public key; "
                                            "each client signs with its own (`llamdex keygen --name ID`)")
    return clients


def load_provider_config(path: str | Path) -> ProviderConfig:
    """Reads a provider TOML file strictly: every table and key known, `[tls]` whole or absent, each client checked."""
    path = Path(path)
    data = check_keys(read_toml(path, "provider"), TOP_LEVEL, str(path))
    base = path.parent
    where = f"{path} [provider]"
    p = section(data, "provider", PROVIDER_KEYS, path)
    tls, plaintext = tls_section(data, base, path)
    rel = lambda v: None if v in (None, "") else (base / v)  # noqa: E731

    def required_path(name: str, default: str) -> Path:
        v = string(p, name, where, default)
        if not v.strip():
            raise ConfigError("BAD_CONFIG", f"{where} {name} must be a path, got an empty string (leave it out for {default!r})")
        return base / v

    raw_clients = data.get("clients", [])
    if not isinstance(raw_clients, list):
        raise fail(f"{path} [[clients]]", "must be an array of tables: write each client as [[clients]]")
    clients = check_clients(tuple(parse_client(c, base, i) for i, c in enumerate(raw_clients)), str(path))
    return ProviderConfig(
        provider_id=check_id(p.get("id", "provider"), "[provider] id"), listen=string(p, "listen", where, "127.0.0.1:50051"),
        key=required_path("key", "provider.key"), state=required_path("state", "provider-state"),
        connectors=rel(string(p, "connectors", where)), base_model=string(p, "base_model", where, "embedded"),
        device=check_device(p.get("device", "cpu")), preset=preset_setting(p.get("preset", "quick")), preload=boolean(p, "preload", where, True),
        tls=tls, plaintext=plaintext, limits=ProviderLimits.from_dict(section(data, "limits", {f.name for f in fields(ProviderLimits)}, path)),
        clients=clients, allow_retrain=boolean(p, "allow_retrain", where, False), log_level=_log_level(p.get("log_level")),
        drain_grace_s=positive_number(p.get("drain_grace_s", 10.0), "[provider] drain_grace_s"), receipt_keys=rel(string(p, "receipt_keys", where)),
    )


__all__ = ["ConfigError", "LOG_LEVELS", "ProviderConfig", "ProviderLimits", "RegisteredClient", "check_clients", "check_device", "check_id",
           "load_provider_config", "parse_client", "positive_number", "preset_setting"]
