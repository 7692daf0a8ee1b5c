"""`llamdex keygen` and `llamdex certs`: signing keys and the mutual-TLS certificates of both parties."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from protocol.wire import WIRE_NAME_RE
from simulations.cli.common import UsageError, positive_int

DEFAULT_HOSTS = "localhost,127.0.0.1,::1"


def register(sub: argparse._SubParsersAction) -> None:
    k = sub.add_parser(
        "keygen", help="create a signing key pair (ECDSA P-256) for a client or the provider",
        description="Create the key that signs a party's artifacts, requests (client) or privacy receipts (provider). "
        "The private key is written with mode 0600 (refused if it exists, unless --force); give the .pub file to the other "
        "party: the provider registers a client by it, the client pins the provider's to verify receipts.",
        epilog="examples:\n  llamdex keygen --name alice --out keys/\n  llamdex keygen --name provider --out keys/ --password-env LLAMDEX_KEY_PASSWORD",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    k.add_argument("--name", required=True, help="file stem: writes NAME.key and NAME.pub")
    k.add_argument("--out", type=Path, default=Path("."), help="folder (default: current)")
    k.add_argument("--curve", choices=["P-256", "P-384", "P-521"], default="P-256", help="ECDSA curve (default P-256, what model_signing uses)")
    k.add_argument("--password-env", metavar="VAR", help="encrypt the private key with the password in this environment variable")
    k.add_argument("--force", action="store_true", help="replace existing files")
    k.set_defaults(func=_keygen)

    c = sub.add_parser(
        "certs", help="create a small CA and mutual-TLS certificates for the provider, clients and orchestrator",
        description="Create a certificate authority (ca.pem, ca.key) and, for each --party NAME=HOSTS, NAME.pem and NAME.key: "
        "common name NAME (the identity the other side sees), subjectAltName HOSTS (the names and IP addresses the party "
        "serves on), usable as TLS server and client. Both parties trust ca.pem. Keep ca.key offline once the certificates exist; "
        "an existing CA in --out is reused.",
        epilog="examples:\n  llamdex certs --out certs/                       # provider, alice, orchestrator on loopback\n"
        "  llamdex certs --out certs/ --party provider=10.77.0.1,provider.example --party alice=10.77.0.2",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    c.add_argument("--out", type=Path, default=Path("certs"), help="folder (default: certs/)")
    c.add_argument("--party", action="append", metavar="NAME=HOST[,HOST...]",
                   help=f"a party and the hosts in its certificate (repeat). Default: provider, alice and orchestrator on {DEFAULT_HOSTS}")
    c.add_argument("--days", type=positive_int, default=365, help="validity in days (default 365)")
    c.add_argument("--force", action="store_true", help="replace existing certificate keys")
    c.set_defaults(func=_certs)


def _keygen(args: argparse.Namespace) -> int:
    from protocol.keys import fingerprint, generate_keypair

    password = None
    if args.password_env:
        password = os.environ.get(args.password_env)
        if not password:
            raise SystemExit(f"environment variable {args.password_env} is empty or unset")
    check_file_name(args.name, "--name", "NAME.key and NAME.pub inside --out")
    if args.out.exists() and not args.out.is_dir():
        raise UsageError(f"--out {args.out} is a file; give the folder the keys go in")
    priv, pub, key = generate_keypair(args.out, args.name, password, args.curve, overwrite=args.force)
    print(f"private key {priv} (mode 0600)\npublic key  {pub}\nfingerprint {fingerprint(key)}")
    return 0


def check_file_name(name: str | None, flag: str, files: str) -> str:
    """A party or key name becomes file names: letters, digits, '.', '_' and '-' only, so it cannot leave the folder."""
    if not WIRE_NAME_RE.fullmatch(name or "") or ".." in (name or ""):
        raise UsageError(f"{flag} {name!r}: a name is a letter or digit followed by letters, digits, '.', '_' or '-' (it names the files "
                         f"{files})")
    return name


def parse_parties(items: list[str] | None) -> dict[str, list[str]]:
    if not items:
        hosts = DEFAULT_HOSTS.split(",")
        return {"provider": hosts, "alice": hosts, "orchestrator": hosts}
    out = {}
    for it in items:
        name, sep, hosts = it.partition("=")
        if not sep or not name:
            raise SystemExit(f"--party {it!r}: expected NAME=HOST[,HOST...]")
        check_file_name(name, "--party", "NAME.pem and NAME.key inside --out")
        if name in out:
            raise UsageError(f"--party {name} is given twice; give all its hosts in one --party {name}=HOST,HOST")
        named = [h.strip() for h in hosts.split(",") if h.strip()]
        if not named:
            raise SystemExit(f"--party {it!r}: name at least one host, e.g. {name}=localhost,127.0.0.1")
        out[name] = named
    return out


def _certs(args: argparse.Namespace) -> int:
    from protocol.tls import make_certs

    files = make_certs(args.out, parse_parties(args.party), days=args.days, overwrite=args.force)
    print(f"CA: {args.out / 'ca.pem'} (key {args.out / 'ca.key'}, keep it offline)")
    for name, f in files.items():
        print(f"{name}: {f.cert} {f.key}")
    return 0
