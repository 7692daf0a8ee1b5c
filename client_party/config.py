"""The client's configuration: a TOML file (paths relative to it) whose values flags may override.

    [client]
    id = "alice"                        # = the CN of its TLS certificate, registered at the provider
    key = "keys/alice.key"              # signs artifacts and requests
    workspace = "client-state"          # artifacts, receipts.db, job results
    max_epsilon = 4.0                   # the largest ε this client accepts per expert
    datasets = ["titanic"]              # what TrainExpert may train on ([] = every registered table)
    listen = "127.0.0.1:50061"          # ClientService (llamdex client serve)
    allowed_callers = ["provider", "orchestrator"]

    [provider]
    address = "127.0.0.1:50051"
    public_key = "keys/provider.pub"    # pinned: every receipt must verify under it
    server_name = ""                    # name to check in the provider's certificate ("" = the host)

    [tls]                               # mutual TLS (the default)
    ca = "certs/ca.pem"
    cert = "certs/alice.pem"
    key = "certs/alice.key"
    # plaintext = true                  # loopback only, for development
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from protocol.errors import CodedError
from protocol.tls import TLSFiles


class ClientConfigError(CodedError):
    """The client configuration is invalid (code BAD_CONFIG)."""


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

    def with_overrides(self, **kw: Any) -> "ClientConfig":
        return replace(self, **{k: v for k, v in kw.items() if v is not None})

    @property
    def receipts_path(self) -> Path:
        return Path(self.workspace) / "receipts.db"

    def signing_key(self) -> Any:
        from protocol.keys import load_private_key

        return load_private_key(self.key)

    def receipt_store(self) -> Any:
        from client_party.receipt_store import ReceiptStore

        if self.provider_public_key is None:
            raise ClientConfigError("BAD_CONFIG", "the provider's public key is not configured ([provider] public_key or --provider-key); "
                                    "receipts cannot be verified without it")
        return ReceiptStore(self.receipts_path, self.client_id, self.provider_public_key)

    def provider_client(self, *, with_store: bool = True) -> Any:
        from client_party.provider_client import ProviderClient

        return ProviderClient(self.provider_address, self.client_id, self.signing_key(), tls=self.tls, plaintext=self.plaintext,
                              provider_public_key=self.provider_public_key, receipt_store=self.receipt_store() if with_store else None,
                              timeout_s=self.timeout_s, server_name=self.server_name or None)


def load_client_config(path: str | Path) -> ClientConfig:
    path = Path(path)
    try:
        data = tomllib.loads(path.read_text())
    except (OSError, tomllib.TOMLDecodeError) as e:
        raise ClientConfigError("BAD_CONFIG", f"cannot read client config {path}: {e}") from None
    base = path.parent
    c, pv, t = data.get("client", {}), data.get("provider", {}), data.get("tls", {})
    rel = lambda v: None if v in (None, "") else (base / v)  # noqa: E731
    tls = TLSFiles(rel(t["ca"]), rel(t["cert"]), rel(t["key"])) if all(k in t for k in ("ca", "cert", "key")) else None
    return ClientConfig(
        client_id=c.get("id", "alice"), key=rel(c.get("key", "alice.key")), workspace=rel(c.get("workspace", "client-state")),
        max_epsilon=float(c.get("max_epsilon", 4.0)), datasets=tuple(c.get("datasets", ())), listen=c.get("listen", "127.0.0.1:50061"),
        allowed_callers=tuple(c.get("allowed_callers", ("provider", "orchestrator"))),
        provider_address=pv.get("address", "127.0.0.1:50051"), provider_public_key=rel(pv.get("public_key")),
        server_name=pv.get("server_name") or None, tls=tls, plaintext=bool(t.get("plaintext", False)),
        chunk_bytes=int(c.get("chunk_bytes", 1 << 20)), timeout_s=float(c.get("timeout_s", 120.0)),
    )


__all__ = ["ClientConfig", "ClientConfigError", "load_client_config"]
