"""The parties' TOML config files: everything documented loads, and a typo, an unknown table or key, a value of the
wrong type or a half-filled [tls] is refused with the file, the table and the key named (a partial [tls] used to mean
"no TLS" without a word)."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from client_party.config import ClientConfig, load_client_config
from client_party.datasets import TableRef
from protocol.keys import generate_keypair
from protocol.toml_config import ConfigError
from provider_party.service.config import load_provider_config

TLS = '[tls]\nca = "certs/ca.pem"\ncert = "certs/me.pem"\nkey = "certs/me.key"\n'


@pytest.fixture()
def folder(tmp_path) -> Path:
    generate_keypair(tmp_path / "keys", "alice")
    generate_keypair(tmp_path / "keys", "bob")
    return tmp_path


def write(folder: Path, text: str, name: str = "party.toml") -> Path:
    path = folder / name
    path.write_text(text)
    return path


# --- the client ------------------------------------------------------------------------------------------------------

CLIENT_FULL = '''
[client]
id = "alice"
key = "keys/alice.key"
workspace = "ws"
max_epsilon = 2.5
datasets = ["titanic", "penguins"]
listen = "127.0.0.1:50061"
allowed_callers = ["provider"]
chunk_bytes = 65536
timeout_s = 30.0

[tables.loans]
data = "data/loans.csv"
schema = "data/loans-public.json"
on_invalid = "drop"

[tables.visits]
data = "visits.parquet"

[provider]
address = "10.0.0.1:50051"
public_key = "keys/provider.pub"
server_name = "provider.example"
''' + TLS


def test_a_full_client_config_loads_with_paths_relative_to_its_folder(folder):
    cfg = load_client_config(write(folder, CLIENT_FULL))
    assert (cfg.client_id, cfg.max_epsilon, cfg.datasets, cfg.allowed_callers) == ("alice", 2.5, ("titanic", "penguins"), ("provider",))
    assert cfg.key == folder / "keys/alice.key" and cfg.workspace == folder / "ws" and cfg.provider_public_key == folder / "keys/provider.pub"
    assert (cfg.chunk_bytes, cfg.timeout_s, cfg.server_name, cfg.plaintext) == (65536, 30.0, "provider.example", False)
    assert (cfg.tls.ca, cfg.tls.cert, cfg.tls.key) == (folder / "certs/ca.pem", folder / "certs/me.pem", folder / "certs/me.key")
    assert cfg.tables == {"loans": TableRef(path=folder / "data/loans.csv", schema_path=folder / "data/loans-public.json", on_invalid="drop"),
                          "visits": TableRef(path=folder / "visits.parquet")}
    assert cfg.offered_datasets == ("titanic", "penguins", "loans", "visits")
    assert cfg.table("loans").path == folder / "data/loans.csv" and cfg.table("titanic") == TableRef(name="titanic")


def test_a_client_with_neither_datasets_nor_tables_offers_every_registered_table(folder):
    from client_party.datasets import DATASETS

    cfg = load_client_config(write(folder, '[client]\nid = "alice"\n[tls]\nplaintext = true\n'))
    assert cfg.offered_datasets == tuple(DATASETS) and cfg.plaintext and cfg.tls is None
    with pytest.raises(ConfigError, match=r"\[tables\.loans\] data"):
        cfg.table("loans")
    assert ClientConfig().offered_datasets == tuple(DATASETS)


@pytest.mark.parametrize("text, names", [
    ('[clients]\nid = "a"\n', ["unknown key 'clients'", "allowed: client, provider, tables, tls"]),
    ('[client]\nidd = "alice"\n', ["[client]", "unknown key 'idd'"]),
    ('[provider]\nadress = "x:1"\n', ["[provider]", "unknown key 'adress'"]),
    ('[tls]\nplaintxt = true\n', ["[tls]", "unknown key 'plaintxt'"]),
    ('[tls]\nca = "ca.pem"\n', ["[tls]", "missing cert, key", "plaintext = true"]),
    ('[tls]\nca = "ca.pem"\ncert = "me.pem"\n', ["[tls]", "missing key"]),
    ('[tls]\ncert = "me.pem"\nkey = "me.key"\n', ["[tls]", "missing ca"]),
    ('[tls]\n', ["[tls]", "missing ca, cert, key"]),
    ('[tls]\nplaintext = true\nca = "ca.pem"\n', ["[tls]", "contradict"]),
    ('[tls]\nplaintext = "yes"\n', ["[tls]", "plaintext must be true or false"]),
    ('[client]\nmax_epsilon = "four"\n', ["[client]", "max_epsilon must be a positive number"]),
    ('[client]\nchunk_bytes = 0\n', ["[client]", "chunk_bytes must be a positive integer"]),
    ('[client]\ndatasets = "titanic"\n', ["[client]", "datasets must be a list"]),
    ('[client]\ndatasets = ["loans"]\n', ["[client]", "'loans'", "[tables.NAME]"]),
    ('[client]\nid = 7\n', ["[client]", "id must be a string"]),
    ('[tables.loans]\nschema = "s.json"\n', ["[tables.loans]", "data"]),
    ('[tables.loans]\ndata = "l.csv"\nschema_file = "s.json"\n', ["[tables.loans]", "unknown key 'schema_file'"]),
    ('[tables.titanic]\ndata = "t.csv"\n', ["[tables.titanic]", "registered table"]),
    ('[tables.loans]\ndata = "l.csv"\non_invalid = "fix"\n', ["[tables.loans]", "on_invalid must be one of ['reject', 'drop', 'clip']", "'fix'"]),
    ('[tables."my loans"]\ndata = "l.csv"\n', ["my loans", "must match"]),
    ('tables = "l.csv"\n', ["[tables]", "must hold tables"]),
    ('[client\nid = "a"\n', ["cannot read client config"]),
])
def test_a_bad_client_config_is_refused_naming_the_file_and_the_key(folder, text, names):
    path = write(folder, text)
    with pytest.raises(ConfigError) as err:
        load_client_config(path)
    msg = str(err.value)
    assert err.value.code == "BAD_CONFIG" and str(path) in msg
    for name in names:
        assert name in msg, msg


def test_a_missing_config_file_is_a_missing_file(folder):
    with pytest.raises(FileNotFoundError) as err:
        load_client_config(folder / "nope.toml")
    assert err.value.filename == str(folder / "nope.toml")
    with pytest.raises(FileNotFoundError):
        load_provider_config(folder / "nope.toml")


# --- the provider ----------------------------------------------------------------------------------------------------

PROVIDER_FULL = '''
[provider]
id = "provider"
listen = "0.0.0.0:50051"
key = "keys/provider.key"
state = "state"
connectors = "conn"
base_model = "embedded"
preset = "default"
preload = false
allow_retrain = true

[limits]
max_artifact_bytes = 1048576
max_batch_questions = 8

[[clients]]
id = "alice"
public_key = "keys/alice.pub"
epsilon_budget = 2.0
delta_budget = 1e-5
callback = "127.0.0.1:50061"
budgets = { titanic = 1.0 }

[[clients]]
id = "bob"
public_key = "keys/bob.pub"
epsilon_budget = "inf"
''' + TLS


def test_a_full_provider_config_loads_with_paths_relative_to_its_folder(folder):
    cfg = load_provider_config(write(folder, PROVIDER_FULL))
    assert (cfg.provider_id, cfg.listen, cfg.base_model, cfg.preset, cfg.preload, cfg.allow_retrain) == (
        "provider", "0.0.0.0:50051", "embedded", "default", False, True)
    assert cfg.key == folder / "keys/provider.key" and cfg.state == folder / "state" and cfg.connectors == folder / "conn"
    assert cfg.tls.ca == folder / "certs/ca.pem" and not cfg.plaintext
    assert cfg.limits.max_artifact_bytes == 1048576 and cfg.limits.max_batch_questions == 8
    alice, bob = cfg.clients
    assert (alice.client_id, alice.epsilon_budget, alice.delta_budget, alice.callback) == ("alice", 2.0, 1e-5, "127.0.0.1:50061")
    assert alice.budget_for("titanic") == (1.0, 1e-5) and alice.budget_for("credit") == (2.0, 1e-5)
    assert math.isinf(bob.epsilon_budget) and bob.callback is None
    bob_unbounded = load_provider_config(write(folder, PROVIDER_FULL.replace('epsilon_budget = "inf"', 'epsilon_budget = inf'))).clients[1]
    assert math.isinf(bob_unbounded.epsilon_budget)   # TOML's own inf means no bound, as "inf" does


def test_an_inline_preset_table_is_a_preset(folder):
    cfg = load_provider_config(write(folder, '[provider]\npreset = { name = "tiny", n_synthetic = 300, inject_candidates = [24] }\n'))
    assert cfg.preset.name == "tiny" and cfg.preset.n_synthetic == 300 and cfg.preset.inject_candidates == (24,)


CLIENT_OK = '[[clients]]\nid = "alice"\npublic_key = "keys/alice.pub"\n'


@pytest.mark.parametrize("text, names", [
    ('[provder]\nid = "p"\n', ["unknown key 'provder'", "allowed: clients, limits, provider, tls"]),
    ('[provider]\nlisten_on = "x:1"\n', ["[provider]", "unknown key 'listen_on'"]),
    ('[provider]\npreload = "no"\n', ["[provider]", "preload must be true or false"]),
    ('[provider]\nstate = 5\n', ["[provider]", "state must be a string"]),
    ('[provider]\npreset = "fast"\n', ["preset 'fast'"]),
    ('[provider]\npreset = { name = "x", speed = 2 }\n', ["preset table", "speed"]),
    ('[provider]\npreset = { name = "x", n_synthetic = "many" }\n', ["preset table", "'n_synthetic' must be a whole number"]),
    ('[provider]\npreset = { name = "x", check_missing = 1.5 }\n', ["preset table", "'check_missing' must be between 0 and 1"]),
    ('[limits]\nmax_artifact_byte = 5\n', ["[limits]", "unknown key 'max_artifact_byte'"]),
    ('[limits]\nmax_batch_questions = -1\n', ["max_batch_questions must be a positive number"]),
    ('[tls]\nca = "ca.pem"\nkey = "k.pem"\n', ["[tls]", "missing cert"]),
    ('[tls]\nplaintext = true\ncert = "me.pem"\n', ["[tls]", "contradict"]),
    ('[[clients]]\nid = "alice"\npublic_key = "keys/alice.pub"\nbudget = 3\n', ["[[clients]] #1", "unknown key 'budget'"]),
    ('[[clients]]\nid = "alice"\n', ["[[clients]] #1", "public_key"]),
    ('[[clients]]\nid = "alice"\npublic_key = "keys/alice.pub"\nbudgets = 3\n', ["[[clients]] #1", "budgets must be a table"]),
    ('[[clients]]\nid = "alice"\npublic_key = "keys/alice.pub"\ncallback = 50061\n', ["[[clients]] #1", "callback must be a string"]),
    ('[[clients]]\nid = "alice"\npublic_key = "keys/alice.pub"\nepsilon_budget = 0\n', ["epsilon_budget must be a positive number"]),
    ('[clients]\nid = "alice"\n', ["[[clients]]", "array of tables"]),
    (CLIENT_OK + CLIENT_OK, ["registered twice"]),
    (CLIENT_OK + CLIENT_OK.replace('"alice"', '"bob"', 1), ["'alice' and 'bob' are registered with one public key"]),
    (CLIENT_OK + 'delta_budget = 2\n', ["(alice) delta_budget must be below 1"]),
    (CLIENT_OK + 'delta_budget = 1\n', ["(alice) delta_budget must be below 1"]),
    (CLIENT_OK + 'callback = "not an address"\n', ["(alice) callback must be the client's HOST:PORT"]),
    (CLIENT_OK + 'revoked_keys = ["keys/alice.pub"]\n', ["(alice) public_key is also in its revoked_keys"]),
    (CLIENT_OK + 'epsilon_budget = 1e400\n', ["line 4: 1e400 is too large for a float", "write inf if you mean no bound"]),
])
def test_a_bad_provider_config_is_refused_naming_the_key(folder, text, names):
    path = write(folder, text)
    with pytest.raises(ConfigError) as err:
        load_provider_config(path)
    msg = str(err.value)
    assert err.value.code == "BAD_CONFIG"
    for name in names:
        assert name in msg, msg


def test_the_demo_writes_configs_the_strict_loaders_accept(tmp_path):
    """The two-party demo's config writers and the loaders agree (the demo is the documented example of both files)."""
    from simulations.two_party_demo import RunLayout, prepare_parties, write_client_config, write_provider_config

    layout = RunLayout(tmp_path)
    prepare_parties(layout, "alice")
    table = TableRef(path=tmp_path / "loans.csv", schema_path=tmp_path / "loans.json", on_invalid="clip")
    ccfg = load_client_config(write_client_config(layout.client / "client.toml", client_id="alice", listen="127.0.0.1:1",
                                                  provider_address="127.0.0.1:2", max_epsilon=4.0, datasets=[], tables={"loans": table}))
    assert ccfg.offered_datasets == ("loans",)
    assert ccfg.table("loans") == TableRef(path=table.path.resolve(), schema_path=table.schema_path.resolve(), on_invalid="clip")
    pcfg = load_provider_config(write_provider_config(layout.provider / "provider.toml", listen="127.0.0.1:2", preset={"name": "tiny"},
                                                      clients=[{"id": "alice", "public_key": "../keys/alice.pub", "epsilon_budget": 4.0}]))
    assert pcfg.clients[0].client_id == "alice" and pcfg.tls is not None and pcfg.preset.name == "tiny"
