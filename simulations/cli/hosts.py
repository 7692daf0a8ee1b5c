"""`llamdex hosts bundle|check`: deploy the two parties on separate hosts from the installed package.

    llamdex hosts bundle --provider-host P --client-host C --out bundles/   # once, on a trusted machine
    scp -r bundles/provider P:llamdex/ ; scp -r bundles/client C:llamdex/    # copy each bundle to its host
    llamdex provider serve --config llamdex/provider/provider.toml          # on the provider host
    llamdex client round --config llamdex/client/client.toml                # on the client host
    llamdex hosts check --config llamdex/client/client.toml                 # on either host, when something fails

`check` reads one party's configuration and reports, one line per check, what it finds: the files
it names exist (private keys 0600), the TLS certificate is valid, issued by the CA it trusts and
matches its key, and (for a client) the pinned provider key is there; then it dials the other party
and asks its health, naming the file or flag to fix when something is wrong.
"""

from __future__ import annotations

import argparse
import sys
import tomllib
from pathlib import Path

from simulations.cli.common import positive_float, positive_int


def register(sub: argparse._SubParsersAction) -> None:
    h = sub.add_parser("hosts", help="two hosts: make the key, certificate and config bundles; check a host's setup",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    hsub = h.add_subparsers(dest="hosts_command", metavar="ACTION")
    from simulations.host_bundles import PRESET_CHOICES

    b = hsub.add_parser(
        "bundle", help="keys, a CA, TLS certificates and both TOML configs, one folder per host",
        description="Write OUT/provider (copy it to the provider host), OUT/client (to the client host), OUT/monitor (a "
        "certificate for `llamdex health` from a third host) and OUT/ca (the CA key: keep it offline). Each host name goes "
        "into that party's certificate (subjectAltName): the client must dial the provider by exactly --provider-host.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="example:\n  llamdex hosts bundle --provider-host provider.example.org --client-host 192.0.2.20 --out bundles")
    b.add_argument("--provider-host", required=True, metavar="HOST", help="name or IP address the client dials the provider by")
    b.add_argument("--client-host", required=True, metavar="HOST", help="name or IP address of the client host (its certificate)")
    b.add_argument("--out", type=Path, default=Path("bundles"), help="folder of the bundles (default: %(default)s)")
    b.add_argument("--client-id", default="alice", help="the client's id: its certificate's CN and its registration (default: %(default)s)")
    b.add_argument("--port", type=int, default=50051, help="the provider's port (default: %(default)s; the client's own service: port+10)")
    b.add_argument("--budget", type=float, default=4.0, help="ε budget per dataset of the client, at the provider (default: %(default)s)")
    b.add_argument("--preset", choices=PRESET_CHOICES, default="quick",
                   help="the provider's connector-training preset (default: %(default)s; tiny = seconds-long, smoke tests only)")
    b.add_argument("--days", type=positive_int, default=365, help="validity of the certificates in days (default: %(default)s)")
    b.add_argument("--force", action="store_true", help="replace bundles already in --out")
    b.set_defaults(func=_bundle)

    c = hsub.add_parser("check", help="check one host's keys, certificates and config, then reach the other party",
                        description="Checks, one line each: the files named by the config exist (private keys mode 0600), the "
                        "TLS certificate is valid, issued by the trusted CA and matches its key, a client's pinned provider key "
                        "exists; then (unless --offline) dials the other party and asks its health, and a client greets the provider (Hello): "
                        "the provider knows this client, and proves it holds the pinned receipt key. Exit status 1 if any check fails.",
                        formatter_class=argparse.RawDescriptionHelpFormatter,
                        epilog="examples:\n  llamdex hosts check --config llamdex/client/client.toml\n"
                        "  llamdex hosts check --config llamdex/provider/provider.toml --offline")
    c.add_argument("--config", type=Path, required=True, help="provider.toml or client.toml")
    c.add_argument("--offline", action="store_true", help="check the files only; do not dial")
    c.add_argument("--timeout", type=positive_float, default=5.0, help="seconds to wait for the other party (default: %(default)s)")
    c.set_defaults(func=_check)
    h.set_defaults(func=lambda a: h.print_help() or 2)


def _bundle(args: argparse.Namespace) -> int:
    from simulations.host_bundles import make_bundles

    try:
        b = make_bundles(args.out, args.provider_host, args.client_host, client_id=args.client_id, port=args.port, budget=args.budget,
                         preset=args.preset, days=args.days, force=args.force)
    except (FileExistsError, ValueError) as e:
        print(f"hosts bundle: {e}", file=sys.stderr)
        return 2
    print(f"provider bundle: {b.provider}  (copy to {args.provider_host}; run `llamdex provider serve --config provider.toml` there)")
    print(f"client bundle:   {b.client}  (copy to {args.client_host}; run `llamdex client round --config client.toml` there)")
    print(f"monitor bundle:  {b.monitor}  (for `llamdex health {args.provider_host}:{args.port} --config ...` from a third host)")
    print(f"CA:              {b.ca}  (ca.key signs certificates: keep it offline)")
    return 0


def _check(args: argparse.Namespace) -> int:
    from protocol.tls import TLSFiles
    from protocol.tls_diagnosis import check_own_files

    cfg_path: Path = args.config
    try:
        data = tomllib.loads(cfg_path.read_text())
    except (OSError, tomllib.TOMLDecodeError) as e:
        print(f"FAIL {cfg_path}: cannot read it: {e}")
        return 1
    base = cfg_path.parent
    role = "provider" if "clients" in data or "listen" in data.get("provider", {}) else "client"
    failed = 0

    def report(ok: bool, what: str) -> None:
        nonlocal failed
        failed += not ok
        print(f"{'ok  ' if ok else 'FAIL'} {what}", flush=True)

    def private_file(path: Path, what: str) -> None:
        if not path.is_file():
            report(False, f"{what} {path}: missing")
        elif path.stat().st_mode & 0o077:
            report(False, f"{what} {path}: mode {oct(path.stat().st_mode & 0o777)}; run `chmod 600 {path}`")
        else:
            report(True, f"{what} {path} (mode 0600)")

    section = data.get("provider" if role == "provider" else "client", {})
    private_file(base / section.get("key", f"{role}.key"), "signing key ([%s] key)" % role)
    t = data.get("tls", {})
    tls = None
    if t.get("plaintext"):
        report(True, "[tls] plaintext = true: loopback only (refused between hosts)")
    elif all(k in t for k in ("ca", "cert", "key")):
        tls = TLSFiles(base / t["ca"], base / t["cert"], base / t["key"])
        for p, what in ((tls.ca, "CA certificate ([tls] ca)"), (tls.cert, "TLS certificate ([tls] cert)")):
            report(Path(p).is_file(), f"{what} {p}" + ("" if Path(p).is_file() else ": missing"))
        private_file(Path(tls.key), "TLS key ([tls] key)")
        if all(Path(p).is_file() for p in (tls.ca, tls.cert, tls.key)):
            problem = check_own_files(tls)
            report(problem is None, str(problem) if problem else f"{tls.cert} is valid, issued by {tls.ca} and matches {tls.key}")
            if problem is None:
                _check_identity(role, data, tls, report)
    else:
        report(False, "[tls] needs ca, cert and key (mutual TLS between hosts)")
    if role == "client":
        pub = data.get("provider", {}).get("public_key")
        report(bool(pub) and (base / pub).is_file(), f"pinned provider key ([provider] public_key) {base / pub if pub else '(not set)'}"
               + ("" if pub and (base / pub).is_file() else ": every receipt is verified under it; copy provider.pub from the provider's bundle"))
        if pub and (base / pub).is_file():
            _check_public_key(base / pub, "[provider] public_key", report, own_key=base / section.get("key", "client.key"))
        provider_at = str(data.get("provider", {}).get("address", ""))
        if provider_at and provider_at.rsplit(":", 1)[-1] == str(section.get("listen", "")).rsplit(":", 1)[-1] \
                and provider_at.rsplit(":", 1)[0] in ("127.0.0.1", "localhost", str(section.get("listen", "")).rsplit(":", 1)[0]):
            report(False, f"[provider] address {provider_at} is this client's own service ([client] listen): give the provider's")
    else:
        for i, c in enumerate(data.get("clients", [])):
            pk = c.get("public_key", "")
            report(bool(pk) and (base / pk).is_file(), f"[[clients]] #{i + 1} {c.get('id')!r}: public key {base / pk if pk else '(not set)'}"
                   + ("" if pk and (base / pk).is_file() else ": copy the client's .pub here"))
            if pk and (base / pk).is_file():
                _check_public_key(base / pk, f"[[clients]] #{i + 1} public_key", report)
    if not args.offline and tls is not None and not failed:
        _check_peer(role, data, tls, base, args.timeout, report)
    print(f"{'all checks passed' if not failed else f'{failed} check(s) failed'}")
    return 1 if failed else 0


def _check_identity(role: str, data: dict, tls, report) -> None:
    """The certificate names this party: a client's CN is its id (the provider knows a client by it), and a provider
    does not serve with a registered client's certificate (a slip between bundles)."""
    cert, cn = tls.cert, tls.identity()
    if role == "client":
        own = str(data.get("client", {}).get("id", ""))
        report(cn == own, f"{cert} names CN={cn}" + ("" if cn == own else f", not this client's id {own!r} ([client] id): the provider "
                                                                          "knows a client by its certificate's CN; take the certificate of this client's bundle"))
    else:
        clients = {str(c.get("id")) for c in data.get("clients", [])}
        report(cn not in clients, f"{cert} names CN={cn}" + (", a registered client's: take provider.pem and provider.key from the "
                                                             "provider's bundle" if cn in clients else ""))


def _check_public_key(path: Path, what: str, report, *, own_key: Path | None = None) -> None:
    """A public signing key file that loads, and (for the pinned provider key) is not this party's own."""
    from protocol.keys import fingerprint, load_private_key, load_public_key

    try:
        key = load_public_key(path)
    except Exception as e:  # noqa: BLE001 - any reason it does not load is the line's finding
        report(False, f"{what} {path} is not a public key ({type(e).__name__}: {' '.join(str(e).split())[:120]})")
        return
    if own_key is not None and own_key.is_file():
        try:
            same = fingerprint(load_private_key(own_key, check_permissions=False)) == fingerprint(key)
        except Exception:  # noqa: BLE001 - the signing key's own line reports it
            return
        if same:
            report(False, f"{what} {path} is this client's own signing key, not the provider's: copy provider.pub from the provider's bundle")


def _check_peer(role: str, data: dict, tls: object, base: Path, timeout_s: float, report) -> None:
    from protocol.errors import CodedError
    from protocol.health_probe import check_health

    if role == "client":
        address = data.get("provider", {}).get("address", "127.0.0.1:50051")
        server_name = data.get("provider", {}).get("server_name") or None
    else:   # the provider checks itself through its own certificate, on loopback
        port = str(data.get("provider", {}).get("listen", "127.0.0.1:50051")).rsplit(":", 1)[-1]
        address, server_name = f"127.0.0.1:{port}", None
    for service, what in (("", "liveness"), (None, "readiness")):
        try:
            ans = check_health(address, tls, service=service, server_name=server_name, timeout_s=timeout_s)
        except CodedError as e:
            report(False, f"{address} {what}: {e}")
            return
        report(ans.serving, f"{address} {ans.what}: {ans.status}" + ("" if ans.serving else " (starting, warming up or draining: see its log)"))
    if role == "client":
        _check_hello(data, tls, base, address, server_name, timeout_s, report)


def _check_hello(data: dict, tls: object, base: Path, address: str, server_name: str | None, timeout_s: float, report) -> None:
    """Hello, as a round begins: the provider knows this client's certificate, and the party answering proves it holds
    the pinned receipt key (`protocol.hello_proof`). Nothing is signed or sent beyond the Hello."""
    import grpc

    from client_party.provider_client import ProviderClient
    from protocol.errors import CodedError
    from protocol.rpc_errors import error_code

    pub = data.get("provider", {}).get("public_key")
    client_id = str(data.get("client", {}).get("id", ""))
    try:
        with ProviderClient(address, client_id, None, tls=tls, provider_public_key=base / pub, server_name=server_name,
                            timeout_s=timeout_s) as pc:
            h = pc.hello()
    except grpc.RpcError as e:
        code = error_code(e) or e.code().name
        report(False, f"{address} Hello: [{code}] {' '.join((e.details() or '').split())}")
        return
    except CodedError as e:
        report(False, f"{address} Hello: {e}")
        return
    report(True, f"{address} Hello: provider {h.provider_id!r} knows this client as {h.client_id!r} and proved it holds the pinned "
                 f"receipt key {h.provider_key_fingerprint[:19]}…")
