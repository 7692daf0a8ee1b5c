"""The client's configuration: a TOML file (paths relative to it) whose values flags may override.

    [client]
    id = "alice"                        # = the CN of its TLS certificate, registered at the provider
    key = "keys/alice.key"              # signs artifacts and requests
    workspace = "client-state"          # artifacts, receipts.db, job results
    max_epsilon = 4.0                   # the largest ε this client accepts per expert
    datasets = ["titanic"]              # registered tables TrainExpert may train on
    listen = "127.0.0.1:50061"          # ClientService (llamdex client serve)
    allowed_callers = ["provider", "orchestrator"]
    # chunk_bytes = 1048576             # upload chunk size
    # timeout_s = 120.0                 # deadline of each call to the provider

    [tables.loans]                      # a table of this client's own, offered as dataset "loans"
    data = "data/loans.csv"             # CSV (optionally .gz/.bz2/.zip) or Parquet
    schema = "data/loans.schema.json"   # optional: default is the .schema.json beside the file
    # on_invalid = "reject"             # rows that violate the schema: reject the table | drop them | clip out-of-range numbers

    [provider]
    address = "127.0.0.1:50051"
    public_key = "keys/provider.pub"    # pinned: every receipt must verify under it
    server_name = ""                    # name to check in the provider's certificate ("" = the host)

    [tls]                               # mutual TLS: all three files
    ca = "certs/ca.pem"
    cert = "certs/alice.pem"
    key = "certs/alice.key"
    # plaintext = true                  # instead of the files: loopback only, for development

The offered datasets are `datasets` plus the names of `[tables.*]`; with neither, every registered
table. Unknown keys and a half-filled `[tls]` are refused with the key named (`ConfigError`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from client_party.datasets import DATASETS, ON_INVALID, TableRef
from protocol.toml_config import ConfigError, check_keys, fail, positive, read_toml, section, string, string_list, tls_section
from protocol.tls import TLSFiles

ClientConfigError = ConfigError  # the name this module used to export
CLIENT_KEYS = {"id", "key", "workspace", "max_epsilon", "datasets", "listen", "allowed_callers", "chunk_bytes", "timeout_s"}
PROVIDER_KEYS = {"address", "public_key", "server_name"}
TABLE_KEYS = {"data", "schema", "on_invalid"}
TOP_LEVEL = {"client", "provider", "tls", "tables"}
DATASET_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


@dataclass(frozen=True)
class ClientConfig:
    client_id: str = "alice"
    key: Path = Path("alice.key")
    workspace: Path = Path("client-state")
    max_epsilon: float = 4.0
    datasets: tuple[str, ...] = ()
    listen: str = "127.0.0.1:50061"
    allowed_callers: tuple[str, ...] = ("provider", "orchestrator")
    provider_address: str = "127.0.0.1:50051"
    provider_public_key: Path | None = None
    server_name: str | None = None
    tls: TLSFiles | None = None
    plaintext: bool = False
    chunk_bytes: int = 1 << 20
    timeout_s: float = 120.0
    port_file: Path | None = None
    tables: dict[str, TableRef] = field(default_factory=dict)   # dataset id -> a table file of this client's own

    def with_overrides(self, **kw: Any) -> "ClientConfig":
        return replace(self, **{k: v for k, v in kw.items() if v is not None})

    @property
    def offered_datasets(self) -> tuple[str, ...]:
        """What TrainExpert may train on: `datasets` and the own tables; with neither, every registered table."""
        if not self.datasets and not self.tables:
            return tuple(DATASETS)
        return tuple(dict.fromkeys((*self.datasets, *self.tables)))

    def table(self, dataset_id: str) -> TableRef:
        """The table behind a dataset id: an own table of `[tables]`, else the registered table of that name."""
        if dataset_id in self.tables:
            return self.tables[dataset_id]
        if dataset_id in DATASETS:
            return TableRef(name=dataset_id)
        raise ConfigError("BAD_CONFIG", f"dataset {dataset_id!r} is neither a registered table ({', '.join(sorted(DATASETS))}) nor in "
                          f"this client's [tables]; add [tables.{dataset_id}] data = \"FILE\" to the client config")

    @property
    def receipts_path(self) -> Path:
        return Path(self.workspace) / "receipts.db"

    def signing_key(self) -> Any:
        from protocol.keys import load_private_key

        return load_private_key(self.key)

    def receipt_store(self) -> Any:
        from client_party.receipt_store import ReceiptStore

        if self.provider_public_key is None:
            raise ConfigError("BAD_CONFIG", "the provider's public key is not configured ([provider] public_key or --provider-key); "
                              "receipts cannot be verified without it")
        return ReceiptStore(self.receipts_path, self.client_id, self.provider_public_key)

    def provider_client(self, *, with_store: bool = True) -> Any:
        from client_party.provider_client import ProviderClient

        return ProviderClient(self.provider_address, self.client_id, self.signing_key(), tls=self.tls, plaintext=self.plaintext,
                              provider_public_key=self.provider_public_key, receipt_store=self.receipt_store() if with_store else None,
                              timeout_s=self.timeout_s, server_name=self.server_name or None)


def load_client_config(path: str | Path) -> ClientConfig:
    """Reads a client TOML file strictly: every key known, every value of its type, `[tls]` whole or absent."""
    path = Path(path)
    data = check_keys(read_toml(path, "client"), TOP_LEVEL, str(path))
    base = path.parent
    where = f"{path} [client]"
    c = section(data, "client", CLIENT_KEYS, path)
    pv = section(data, "provider", PROVIDER_KEYS, path)
    tls, plaintext = tls_section(data, base, path)
    rel = lambda v: None if v in (None, "") else (base / v)  # noqa: E731
    datasets = string_list(c, "datasets", where, ())
    unknown = [d for d in datasets if d not in DATASETS]
    if unknown:
        raise fail(where, f"datasets {unknown} are not registered tables ({', '.join(sorted(DATASETS))}); "
                          "a table of your own goes in [tables.NAME] data = \"FILE\"")
    return ClientConfig(
        client_id=string(c, "id", where, "alice"), key=rel(string(c, "key", where, "alice.key")),
        workspace=rel(string(c, "workspace", where, "client-state")), max_epsilon=float(positive(c, "max_epsilon", where, 4.0)),
        datasets=datasets, listen=string(c, "listen", where, "127.0.0.1:50061"),
        allowed_callers=string_list(c, "allowed_callers", where, ("provider", "orchestrator")),
        provider_address=string(pv, "address", f"{path} [provider]", "127.0.0.1:50051"),
        provider_public_key=rel(string(pv, "public_key", f"{path} [provider]")),
        server_name=string(pv, "server_name", f"{path} [provider]") or None, tls=tls, plaintext=plaintext,
        chunk_bytes=int(positive(c, "chunk_bytes", where, 1 << 20, integer=True)), timeout_s=float(positive(c, "timeout_s", where, 120.0)),
        tables=_tables(data.get("tables", {}), base, path),
    )


def _tables(raw: Any, base: Path, path: Path) -> dict[str, TableRef]:
    """`[tables.NAME]` entries: a data file (and optionally its schema), relative to the config's folder, and what
    loading does with records that violate the schema (`on_invalid`: reject, the default; drop; clip)."""
    if not isinstance(raw, dict):
        raise fail(f"{path} [tables]", f"must hold tables [tables.NAME], got {raw!r}")
    out: dict[str, TableRef] = {}
    for name, t in raw.items():
        where = f"{path} [tables.{name}]"
        if not DATASET_ID_RE.fullmatch(name):
            raise fail(where, f"the name {name!r} must match {DATASET_ID_RE.pattern} (it names the dataset in budgets and receipts)")
        if name in DATASETS:
            raise fail(where, f"{name!r} is a registered table; give your own table another name")
        check_keys(t, TABLE_KEYS, where)
        data = string(t, "data", where)
        if not data:
            raise fail(where, "data (the table's CSV or Parquet file) is required")
        schema = string(t, "schema", where)
        on_invalid = string(t, "on_invalid", where, "reject")
        if on_invalid not in ON_INVALID:
            raise fail(where, f"on_invalid must be one of {list(ON_INVALID)}, got {on_invalid!r}")
        out[name] = TableRef(path=base / data, schema_path=base / schema if schema else None, on_invalid=on_invalid)
    return out


__all__ = ["ClientConfig", "ClientConfigError", "ConfigError", "load_client_config"]
