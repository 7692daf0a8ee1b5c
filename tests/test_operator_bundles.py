"""The two-host flow from the installed package: `llamdex hosts bundle` writes one relocatable folder per host
(keys, CA, certificates, configs that load), every setting of each step is a flag whose default `--help`
shows, and scripts/two_hosts.sh is a thin wrapper that maps its old environment onto those flags."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from cryptography import x509

from client_party.config import load_client_config
from protocol.keys import fingerprint, load_public_key
from provider_party.service.config import load_provider_config
from simulations.host_bundles import make_bundles

ROOT = Path(__file__).resolve().parents[1]


def _names(cert_path: Path) -> set[str]:
    cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    return {str(n) for n in san.get_values_for_type(x509.DNSName)} | {str(i) for i in san.get_values_for_type(x509.IPAddress)}


def test_a_bundle_per_host_that_loads_wherever_it_is_copied(tmp_path):
    b = make_bundles(tmp_path / "made", "10.77.0.1", "10.77.0.2", client_id="carol", port=50555, budget=2.5, preset="default")
    moved = tmp_path / "elsewhere"
    shutil.copytree(b.provider, moved / "provider")
    shutil.copytree(b.client, moved / "client")
    shutil.rmtree(tmp_path / "made")                                 # nothing points back at where they were made

    pcfg = load_provider_config(moved / "provider" / "provider.toml")
    assert pcfg.listen == "0.0.0.0:50555" and pcfg.preset == "default" and pcfg.preload and pcfg.log_level == "info"
    carol = pcfg.client("carol")
    assert carol is not None and carol.epsilon_budget == 2.5
    ccfg = load_client_config(moved / "client" / "client.toml")
    assert ccfg.provider_address == "10.77.0.1:50555" and ccfg.client_id == "carol" and ccfg.max_epsilon == 2.5
    # the registration and the pin: each side holds the other's public key
    assert fingerprint(carol.public_key) == fingerprint(load_public_key(moved / "client" / "keys" / "carol.pub"))
    assert fingerprint(load_public_key(ccfg.provider_public_key)) == fingerprint(load_public_key(moved / "provider" / "keys" / "provider.pub"))
    # certificates name the hosts (the provider's also loopback, for health checks on its own host)
    assert _names(pcfg.tls.cert) == {"10.77.0.1", "localhost", "127.0.0.1"} and _names(ccfg.tls.cert) == {"10.77.0.2"}
    for private in (pcfg.key, pcfg.tls.key, ccfg.key, ccfg.tls.key):
        assert Path(private).stat().st_mode & 0o777 == 0o600, private
    assert not (moved / "provider" / "certs" / "ca.key").exists() and not (moved / "client" / "certs" / "ca.key").exists()


def test_bundle_refuses_to_overwrite_and_names_the_flag(tmp_path, capsys):
    from simulations.cli.main import main

    argv = ["hosts", "bundle", "--provider-host", "10.77.0.1", "--client-host", "10.77.0.2", "--out", str(tmp_path / "b")]
    assert main(argv) == 0
    assert main(argv) == 2
    assert "--force" in capsys.readouterr().err
    assert main(argv + ["--force"]) == 0


@pytest.mark.parametrize("verb, defaults", [
    (["hosts", "bundle"], ["--port PORT", "(default: 50051", "--budget BUDGET", "(default: 4.0)", "--preset {quick,default,tiny}",
                           "(default: quick;", "--out OUT", "(default: bundles)", "--client-id", "(default: alice)"]),
    (["client", "round"], ["--data NAME|FILE", "(default: titanic)", "--epsilon EPSILON", "(default: 1.0;", "--max-test",
                           "(default: 0 = all of them)", "--wait SECONDS", "(default: 120.0)", "--preset", "(default: the provider's own)"]),
    (["provider", "serve"], ["--log-level", "LLAMDEX_LOG_LEVEL", "--grace SECONDS", "else 10)"]),
    (["health"], ["--ready", "(default)", "--live", "--timeout", "(default: 5.0)", "--wait SECONDS"]),
])
def test_every_setting_of_a_step_is_a_flag_whose_default_help_shows(verb, defaults, capsys):
    from simulations.cli.main import main

    with pytest.raises(SystemExit):
        main([*verb, "--help"])
    text = " ".join(capsys.readouterr().out.split())
    for d in defaults:
        assert d in text, f"{' '.join(verb)} --help lacks {d!r}"


def test_two_hosts_sh_is_a_thin_wrapper_over_hosts_bundle(tmp_path):
    env = {**os.environ, "LLAMDEX": f"{sys.executable} -m simulations.cli.main", "PYTHONPATH": str(ROOT), "PRESET": "tiny", "PORT": "50600",
           "BUDGET": "3"}
    r = subprocess.run(["bash", str(ROOT / "scripts" / "two_hosts.sh"), "setup", str(tmp_path / "b"), "10.77.0.1", "10.77.0.2"], cwd=ROOT,
                       env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert "+ llamdex hosts bundle --provider-host 10.77.0.1 --client-host 10.77.0.2" in r.stderr and "--port 50600 --budget 3" in r.stderr
    pcfg = load_provider_config(tmp_path / "b" / "provider" / "provider.toml")
    assert pcfg.listen == "0.0.0.0:50600" and pcfg.client("alice").epsilon_budget == 3.0 and pcfg.preset.name == "tiny"


def test_hosts_check_on_each_host_reaches_the_running_provider_through_its_bundle(tmp_path, capsys):
    from dataclasses import replace

    from provider_party.service.server import ProviderServer
    from simulations.cli.main import main
    from simulations.two_party_demo import free_port

    port = free_port()
    b = make_bundles(tmp_path / "b", "127.0.0.1", "127.0.0.1", port=port, preset="tiny")
    cfg = replace(load_provider_config(b.provider / "provider.toml"), listen=f"127.0.0.1:{port}", preload=False)
    server = ProviderServer(cfg).start()
    try:
        for config in (b.client / "client.toml", b.provider / "provider.toml"):
            assert main(["hosts", "check", "--config", str(config)]) == 0
            out = capsys.readouterr().out
            assert f"ok   127.0.0.1:{port} liveness: SERVING" in out and f"ok   127.0.0.1:{port} readiness (llamdex.v1.ProviderService): SERVING" in out
            hello = f"ok   127.0.0.1:{port} Hello: provider 'provider' knows this client as 'alice' and proved it holds the pinned"
            assert (hello in out) == (config.name == "client.toml"), out
    finally:
        server.stop(0)
    assert main(["hosts", "check", "--config", str(b.client / "client.toml")]) == 1
    assert f"FAIL 127.0.0.1:{port} liveness: [UNREACHABLE]" in capsys.readouterr().out


def test_hosts_check_says_when_the_provider_does_not_know_this_client(tmp_path, capsys):
    """Liveness and readiness pass for any caller with a certificate of the CA; the Hello is what a round needs."""
    from dataclasses import replace

    from provider_party.service.server import ProviderServer
    from simulations.cli.main import main
    from simulations.two_party_demo import free_port

    port = free_port()
    b = make_bundles(tmp_path / "b", "127.0.0.1", "127.0.0.1", port=port, preset="tiny")
    cfg = load_provider_config(b.provider / "provider.toml")
    server = ProviderServer(replace(cfg, listen=f"127.0.0.1:{port}", preload=False,
                                    clients=tuple(c for c in cfg.clients if c.client_id != "alice"))).start()
    try:
        assert main(["hosts", "check", "--config", str(b.client / "client.toml")]) == 1
        out = capsys.readouterr().out
        assert f"ok   127.0.0.1:{port} readiness" in out and f"FAIL 127.0.0.1:{port} Hello: [UNREGISTERED_CLIENT]" in out, out
    finally:
        server.stop(0)


def test_the_rounds_client_trains_on_a_table_file_and_rebuilds_its_held_out_questions_from_it(tmp_path):
    """`client round --data FILE`: the client's training and its held-out split read the same file."""
    from client_party.datasets import TableRef, load_table
    from client_party.service import ClientParty

    df, schema = load_table("titanic")
    csv = tmp_path / "passengers.csv"
    df.iloc[:300].to_csv(csv, index=False)
    schema.save(tmp_path / "passengers.schema.json")
    b = make_bundles(tmp_path / "b", "10.77.0.1", "10.77.0.2", preset="tiny")
    party = ClientParty(load_client_config(b.client / "client.toml"))
    art = party.train(TableRef.parse(csv), None, epochs=2)
    assert art.dataset_id == "passengers" and art.n_train + art.n_test == 300
    info = party.index()[art.artifact_digest]
    assert info["table"] == {"path": str(csv.resolve())}
    questions, x, y, _ = party.heldout_questions(info)
    assert len(questions) == len(y) == art.n_test and all("?" in q for q in questions)


def test_a_table_trained_with_invalid_records_dropped_rebuilds_the_same_held_out_split(tmp_path):
    """The index remembers the policy: the held-out split is rebuilt from the same records, not refused or shifted."""
    import pandas as pd

    from client_party.datasets import TableRef, load_table
    from client_party.service import ClientParty

    df, schema = load_table("titanic")
    bad = df.iloc[:5].assign(age=-4.0)                  # five records outside the schema's age range
    csv = tmp_path / "passengers.csv"
    pd.concat([df.iloc[:300], bad]).to_csv(csv, index=False)
    schema.save(tmp_path / "passengers.schema.json")
    b = make_bundles(tmp_path / "b", "10.77.0.1", "10.77.0.2", preset="tiny")
    party = ClientParty(load_client_config(b.client / "client.toml"))
    with pytest.warns(UserWarning, match="dropped 5 of 305 records"):
        art = party.train(TableRef.parse(csv, on_invalid="drop"), None, epochs=2)
    assert art.n_train + art.n_test == 300
    info = party.index()[art.artifact_digest]
    assert info["table"] == {"path": str(csv.resolve()), "on_invalid": "drop"}
    with pytest.warns(UserWarning, match="dropped 5"):
        questions, _, y, _ = party.heldout_questions(info)
    assert len(questions) == len(y) == art.n_test


def test_hosts_check_names_setups_whose_round_would_fail_at_once(tmp_path, capsys):
    """`hosts check --offline` said "all checks passed" for each of these; the first round then failed (or, for the
    pinned key, read like an attack)."""
    import tomllib

    from protocol.tls import make_certs
    from simulations.cli.main import main

    b = make_bundles(tmp_path / "b", "127.0.0.1", "127.0.0.1", preset="tiny")
    client_toml, provider_toml = b.client / "client.toml", b.provider / "provider.toml"

    def check(config: Path) -> tuple[int, str]:
        code = main(["hosts", "check", "--config", str(config), "--offline"])
        return code, capsys.readouterr().out

    def swapped(path: Path, content: bytes):
        original = path.read_bytes()
        path.write_bytes(content)
        return lambda: path.write_bytes(original)

    assert check(client_toml)[0] == 0 and check(provider_toml)[0] == 0
    restore = swapped(b.client / "keys" / "provider.pub", (b.client / "keys" / "alice.pub").read_bytes())
    assert "is this client's own signing key, not the provider's" in check(client_toml)[1]
    (b.client / "keys" / "provider.pub").write_text("not a key\n")
    assert "is not a public key" in check(client_toml)[1]
    restore()

    listen = tomllib.loads(client_toml.read_text())["client"]["listen"].rsplit(":", 1)[-1]
    text = client_toml.read_text()
    restore = swapped(client_toml, "\n".join(f'address = "127.0.0.1:{listen}"' if line.startswith("address = ") else line
                                             for line in text.splitlines()).encode())
    assert "is this client's own service" in check(client_toml)[1]
    restore()

    make_certs(b.ca, {"bob": ["127.0.0.1"]})   # the same CA's certificate of another client
    restore_cert = swapped(b.client / "certs" / "alice.pem", (b.ca / "bob.pem").read_bytes())
    restore_key = swapped(b.client / "certs" / "alice.key", (b.ca / "bob.key").read_bytes())
    code, out = check(client_toml)
    assert code == 1 and "names CN=bob, not this client's id 'alice'" in out
    restore_cert(), restore_key()

    swapped(b.provider / "certs" / "provider.pem", (b.client / "certs" / "alice.pem").read_bytes())
    swapped(b.provider / "certs" / "provider.key", (b.client / "certs" / "alice.key").read_bytes())
    code, out = check(provider_toml)
    assert code == 1 and "names CN=alice, a registered client's" in out


def test_a_second_client_round_in_one_workspace_is_refused_before_it_spends_anything(tmp_path, capsys):
    """Each round spends ε: one started while another runs (another terminal, a retry) is refused, naming the first."""
    import os

    from client_party.config import load_client_config
    from protocol.folder_lock import holding
    from simulations.cli.client_round import ROUND_LOCK
    from simulations.cli.main import main

    b = make_bundles(tmp_path / "b", "127.0.0.1", "127.0.0.1", preset="tiny")
    workspace = load_client_config(b.client / "client.toml").workspace
    workspace.mkdir(parents=True, exist_ok=True)
    with holding(workspace / ROUND_LOCK):   # the first round, still running
        assert main(["client", "round", "--config", str(b.client / "client.toml"), "--wait", "0"]) == 3
    err = capsys.readouterr().err
    assert "[ROUND_IN_PROGRESS]" in err and f"(pid {os.getpid()})" in err and "spend ε again" in err, err
    assert not (workspace / "artifacts").exists() and not (workspace / "rounds").exists()
