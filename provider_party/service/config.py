"""The provider's configuration: a TOML file (paths relative to it) whose values flags may override.

    [provider]
    id = "provider"
    listen = "127.0.0.1:50051"
    key = "keys/provider.key"          # signs receipts
    state = "provider-state"           # ledger, uploads, experts
    connectors = ""                    # connector store ("" = $LLAMDEX_HOME/connectors)
    base_model = "embedded"
    preset = "quick"                   # connector training preset
    preload = true                     # load the base LLM at start, in the background

    # allow_retrain = false            # may a client ask to retrain connectors that exist

    [tls]                              # mutual TLS: all three files
    ca = "certs/ca.pem"
    cert = "certs/provider.pem"
    key = "certs/provider.key"
    # plaintext = true                 # instead of the files: loopback only, for development

    [limits]                           # every limit is explicit; see ProviderLimits
    max_artifact_bytes = 268435456

    [[clients]]                        # only registered clients are served
    id = "alice"                       # = the CN of its TLS certificate
    public_key = "keys/alice.pub"      # verifies its artifacts and signed requests
    epsilon_budget = 4.0               # per dataset, basic composition ("inf" = unbounded)
    delta_budget = 1e-4                # optional
    callback = "127.0.0.1:50061"       # optional: its ClientService, for job results
    budgets = { titanic = 2.0 }        # optional per-dataset epsilon budgets

Unknown tables or keys, a half-filled `[tls]` and values of the wrong type are refused with the key named.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from protocol.keys import PublicKey, fingerprint, load_public_key
from protocol.tls import TLSFiles
from protocol.toml_config import ConfigError, boolean, check_keys, fail, read_toml, section, string, tls_section

MiB = 1 << 20
ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
TOP_LEVEL = {"provider", "tls", "limits", "clients"}
PROVIDER_KEYS = {"id", "listen", "key", "state", "connectors", "base_model", "preset", "preload", "allow_retrain"}


@dataclass(frozen=True)
class ProviderLimits:
    """Every limit the provider enforces (reported by Hello)."""

    max_message_bytes: int = 4 * MiB
    max_artifact_bytes: int = 256 * MiB
    max_chunk_bytes: int = 2 * MiB
    max_batch_questions: int = 64
    max_question_chars: int = 4000
    signature_max_skew_ms: int = 300_000
    upload_ttl_s: int = 24 * 3600
    max_open_uploads: int = 4
    max_page_size: int = 1000
    max_requests_per_second: float = 50.0
    max_job_queue: int = 8
    max_workers: int = 16            # gRPC server threads
    callback_timeout_s: float = 10.0  # delivering a job result to a client

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "ProviderLimits":
        known = {f.name: f.type for f in fields(cls)}
        unknown = set(d) - set(known)
        if unknown:
            raise ConfigError("BAD_CONFIG", f"[limits]: unknown keys {sorted(unknown)}; known: {sorted(known)}")
        out = cls(**d)
        for f in fields(out):
            v = getattr(out, f.name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not v > 0:
                raise ConfigError("BAD_CONFIG", f"[limits] {f.name} must be a positive number, got {v!r}")
        if out.max_chunk_bytes + 64 * 1024 > out.max_message_bytes:
            raise ConfigError("BAD_CONFIG", "[limits] max_chunk_bytes + 64 KiB must fit in max_message_bytes")
        return out


@dataclass(frozen=True)
class RegisteredClient:
    client_id: str
    public_key: PublicKey
    epsilon_budget: float = 4.0
    delta_budget: float = math.inf
    budgets: dict[str, float] = field(default_factory=dict)
    callback: str | None = None

    @property
    def key_fingerprint(self) -> str:
        return fingerprint(self.public_key)

    def budget_for(self, dataset_id: str) -> tuple[float, float]:
        return float(self.budgets.get(dataset_id, self.epsilon_budget)), float(self.delta_budget)


def _num(v: Any, where: str) -> float:
    if isinstance(v, str) and v.lower() in ("inf", "unbounded"):
        return math.inf
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not v > 0:
        raise ConfigError("BAD_CONFIG", f"{where} must be a positive number or \"inf\", got {v!r}")
    return float(v)


def check_id(value: Any, what: str) -> str:
    if not isinstance(value, str) or not ID_RE.match(value):
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
    preset: Any = "quick"            # a PRESETS name or a Preset
    preload: bool = True
    tls: TLSFiles | None = None
    plaintext: bool = False
    limits: ProviderLimits = field(default_factory=ProviderLimits)
    clients: tuple[RegisteredClient, ...] = ()
    allow_retrain: bool = False
    port_file: Path | None = None   # written with the bound address once serving

    def client(self, client_id: str) -> RegisteredClient | None:
        for c in self.clients:
            if c.client_id == client_id:
                return c
        return None

    def with_overrides(self, **kw: Any) -> "ProviderConfig":
        return replace(self, **{k: v for k, v in kw.items() if v is not None})


def parse_client(d: dict[str, Any], base: Path, i: int) -> RegisteredClient:
    where = f"[[clients]] #{i + 1}"
    check_keys(d, {"id", "public_key", "epsilon_budget", "delta_budget", "budgets", "callback"}, where)
    cid = check_id(d.get("id"), f"{where} id")
    pk = d.get("public_key")
    if not isinstance(pk, str):
        raise ConfigError("BAD_CONFIG", f"{where} ({cid}): public_key (a PEM file) is required")
    key = load_public_key(pk if pk.lstrip().startswith("-----BEGIN") else base / pk)
    raw_budgets = d.get("budgets") or {}
    if not isinstance(raw_budgets, dict):
        raise fail(where, f"budgets must be a table {{ DATASET = EPSILON, ... }}, got {raw_budgets!r}")
    budgets = {check_id(k, f"{where} budgets key"): _num(v, f"{where} budgets.{k}") for k, v in raw_budgets.items()}
    string(d, "callback", where)
    return RegisteredClient(cid, key, _num(d.get("epsilon_budget", 4.0), f"{where} epsilon_budget"),
                            _num(d.get("delta_budget", "inf"), f"{where} delta_budget"), budgets, d.get("callback") or None)


def _preset(v: Any) -> Any:
    """A preset name ("quick", "default"), or an inline table of Preset fields (e.g. a tiny preset for tests)."""
    from provider_party.model.connector_training import PRESETS, Preset

    if isinstance(v, str):
        if v not in PRESETS:
            raise ConfigError("BAD_CONFIG", f"[provider] preset {v!r} is not one of {sorted(PRESETS)} (or give an inline table of Preset fields)")
        return v
    if isinstance(v, dict):
        try:
            return Preset(**{k: tuple(x) if isinstance(x, list) else x for k, x in v.items()})
        except TypeError as e:
            raise ConfigError("BAD_CONFIG", f"[provider] preset table: {e}") from None
    raise ConfigError("BAD_CONFIG", f"[provider] preset must be a name or a table, got {v!r}")


def load_provider_config(path: str | Path) -> ProviderConfig:
    """Reads a provider TOML file strictly: every table and key known, `[tls]` whole or absent, each client checked."""
    path = Path(path)
    data = check_keys(read_toml(path, "provider"), TOP_LEVEL, str(path))
    base = path.parent
    where = f"{path} [provider]"
    p = section(data, "provider", PROVIDER_KEYS, path)
    tls, plaintext = tls_section(data, base, path)
    rel = lambda v: None if v in (None, "") else (base / v)  # noqa: E731
    raw_clients = data.get("clients", [])
    if not isinstance(raw_clients, list):
        raise fail(f"{path} [[clients]]", "must be an array of tables: write each client as [[clients]]")
    clients = tuple(parse_client(c, base, i) for i, c in enumerate(raw_clients))
    ids = [c.client_id for c in clients]
    if len(set(ids)) != len(ids):
        raise ConfigError("BAD_CONFIG", f"{path}: a client id is registered twice: {ids}")
    return ProviderConfig(
        provider_id=check_id(p.get("id", "provider"), "[provider] id"), listen=string(p, "listen", where, "127.0.0.1:50051"),
        key=rel(string(p, "key", where, "provider.key")), state=rel(string(p, "state", where, "provider-state")),
        connectors=rel(string(p, "connectors", where)), base_model=string(p, "base_model", where, "embedded"),
        preset=_preset(p.get("preset", "quick")), preload=boolean(p, "preload", where, True),
        tls=tls, plaintext=plaintext, limits=ProviderLimits.from_dict(section(data, "limits", {f.name for f in fields(ProviderLimits)}, path)),
        clients=clients, allow_retrain=boolean(p, "allow_retrain", where, False),
    )


__all__ = ["ConfigError", "ProviderConfig", "ProviderLimits", "RegisteredClient", "check_id", "load_provider_config", "parse_client"]
