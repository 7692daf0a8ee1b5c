"""Everything two hosts need to run a round, in one folder per host: `make_bundles`.

    OUT/provider/   provider.toml, keys/provider.key (receipts; 0600), keys/provider.pub, keys/CLIENT.pub (the
                    registration), certs/ca.pem, certs/provider.pem, certs/provider.key (TLS; 0600)
    OUT/client/     client.toml, keys/CLIENT.key (artifacts and requests; 0600), keys/CLIENT.pub,
                    keys/provider.pub (pinned: every receipt must verify under it), certs/ca.pem, certs/CLIENT.pem,
                    certs/CLIENT.key (TLS; 0600)
    OUT/monitor/    certs/ca.pem, certs/monitor.pem, certs/monitor.key: for `llamdex health` from a third host
                    (the provider answers health to any certificate of its CA, and nothing else to this one)
    OUT/ca/         ca.pem and ca.key (keep it offline) and every certificate issued

Paths inside each TOML file are relative to it, so a bundle works wherever it is copied. The
provider's certificate names PROVIDER_HOST plus `localhost` and `127.0.0.1` (so `llamdex health
127.0.0.1:PORT --config provider.toml` works on the provider host); the client's names CLIENT_HOST
(its own service, for job results pushed back). In a real deployment each party may make its own
signing key and send only the .pub; only certificates need the CA.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

SMOKE_PRESET = {"name": "tiny", "n_synthetic": 300, "encoder_questions": 16, "decoder_questions": 8, "val_questions": 8,
                "encoder_epochs": 1, "decoder_epochs": 1, "inject_candidates": [24], "surrogate_epochs": 1}
PRESET_CHOICES = ("quick", "default", "tiny")   # tiny: a seconds-long connector run, for smoke tests only
LOOPBACK_NAMES = ("localhost", "127.0.0.1")


@dataclass(frozen=True)
class Bundles:
    provider: Path
    client: Path
    monitor: Path
    ca: Path


CLIENT_PORT_OFFSET = 10   # the client's service listens next to the provider's port


def _toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    if isinstance(v, dict):
        return "{ " + ", ".join(f"{k} = {_toml_value(x)}" for k, x in v.items()) + " }"
    return json.dumps(str(v))


def _toml(header: str, sections: list[tuple[str, dict[str, Any]]]) -> str:
    lines = [f"# {header}"]
    for name, values in sections:
        lines += ["", name] + [f"{k} = {_toml_value(v)}" for k, v in values.items() if v is not None]
    return "\n".join(lines) + "\n"


def _host_literal(host: str) -> str:
    return f"[{host}]" if ":" in host else host


def _copy_private(src: Path, dst: Path) -> None:
    shutil.copyfile(src, dst)
    dst.chmod(0o600)


RESERVED_NAMES = ("provider", "monitor", "ca")


def make_bundles(out: str | Path, provider_host: str, client_host: str, *, client_id: str = "alice", port: int = 50051,
                 budget: float = 4.0, preset: str = "quick", days: int = 365, force: bool = False) -> Bundles:
    """Keys, a CA, certificates and both configs (see the module doc); refuses to overwrite unless `force`."""
    from protocol.keys import generate_keypair
    from protocol.tls import MAX_DAYS, check_host, make_certs
    from provider_party.service.config import check_id

    # every value checked before the first file is written: a refusal leaves no half bundle for the corrected rerun to trip on
    check_id(client_id, "--client-id")
    if client_id in RESERVED_NAMES:   # the bundle's own file and certificate names: the client's would overwrite them
        raise ValueError(f"--client-id {client_id!r} is a name the bundles use themselves ({', '.join(RESERVED_NAMES)}: the provider's, the "
                         "monitor's and the certificate authority's files and certificates); choose another id")
    check_host(provider_host)
    check_host(client_host)
    if preset not in PRESET_CHOICES:
        raise ValueError(f"--preset {preset!r}: expected one of {PRESET_CHOICES}")
    if not 0 < port <= 65535 - CLIENT_PORT_OFFSET:
        raise ValueError(f"--port {port}: expected 1..{65535 - CLIENT_PORT_OFFSET} (the client listens on the port + {CLIENT_PORT_OFFSET})")
    if not 0 < budget < float("inf"):
        raise ValueError(f"--budget {budget}: the ε budget per dataset must be a positive finite number (an unbounded one is "
                         "written by hand, `epsilon_budget = \"inf\"`, on purpose)")
    if not 1 <= days <= MAX_DAYS:
        raise ValueError(f"--days {days}: a certificate's validity must be 1 to {MAX_DAYS} days")
    out = Path(out)
    b = Bundles(out / "provider", out / "client", out / "monitor", out / "ca")
    existing = [str(p) for p in (b.provider, b.client, b.monitor, b.ca) if p.exists() and any(p.iterdir())]
    if existing and not force:
        raise FileExistsError(f"{', '.join(existing)} already exist; pick another --out or add --force to replace them")
    for p in (b.provider, b.client, b.monitor, b.ca):
        if force and p.exists():
            shutil.rmtree(p)
        p.mkdir(parents=True)
    for d in (b.provider / "keys", b.provider / "certs", b.client / "keys", b.client / "certs", b.monitor / "certs"):
        d.mkdir()

    generate_keypair(b.provider / "keys", "provider")
    generate_keypair(b.client / "keys", client_id)
    shutil.copyfile(b.client / "keys" / f"{client_id}.pub", b.provider / "keys" / f"{client_id}.pub")
    shutil.copyfile(b.provider / "keys" / "provider.pub", b.client / "keys" / "provider.pub")
    provider_names = [provider_host] + [n for n in LOOPBACK_NAMES if n != provider_host]
    make_certs(b.ca, {"provider": provider_names, client_id: [client_host], "monitor": ["localhost"]}, days=days)
    for bundle, name in ((b.provider, "provider"), (b.client, client_id), (b.monitor, "monitor")):
        shutil.copyfile(b.ca / "ca.pem", bundle / "certs" / "ca.pem")
        shutil.copyfile(b.ca / f"{name}.pem", bundle / "certs" / f"{name}.pem")
        _copy_private(b.ca / f"{name}.key", bundle / "certs" / f"{name}.key")

    preset_value: Any = SMOKE_PRESET if preset == "tiny" else preset
    (b.provider / "provider.toml").write_text(_toml("Llamdex provider (written by `llamdex hosts bundle`; paths are relative to this file)", [
        ("[provider]", {"id": "provider", "listen": f"0.0.0.0:{port}", "key": "keys/provider.key", "state": "state",
                        "connectors": "connectors", "preset": preset_value, "preload": True, "log_level": "info", "drain_grace_s": 10}),
        ("[tls]", {"ca": "certs/ca.pem", "cert": "certs/provider.pem", "key": "certs/provider.key"}),
        ("[[clients]]", {"id": client_id, "public_key": f"keys/{client_id}.pub", "epsilon_budget": float(budget)}),
    ]))
    (b.client / "client.toml").write_text(_toml("Llamdex client (written by `llamdex hosts bundle`; paths are relative to this file)", [
        ("[client]", {"id": client_id, "key": f"keys/{client_id}.key", "workspace": "workspace", "max_epsilon": float(budget),
                      "listen": f"0.0.0.0:{port + CLIENT_PORT_OFFSET}"}),
        ("[provider]", {"address": f"{_host_literal(provider_host)}:{port}", "public_key": "keys/provider.pub"}),
        ("[tls]", {"ca": "certs/ca.pem", "cert": f"certs/{client_id}.pem", "key": f"certs/{client_id}.key"}),
    ]))
    return b


__all__ = ["Bundles", "LOOPBACK_NAMES", "PRESET_CHOICES", "SMOKE_PRESET", "make_bundles"]
