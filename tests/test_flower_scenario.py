"""The Flower app's pieces without a Flower runtime: the run config, the partitions, and the upload stream on the provider's real path."""

from __future__ import annotations

import numpy as np
import pytest

from simulations.flower.scenario import Scenario, ScenarioError

# --- the run config -----------------------------------------------------------------------------------------


def test_the_defaults_describe_three_titanic_clients_at_epsilon_one():
    s = Scenario.from_run_config({})
    assert (s.data, s.clients, s.partition, s.epsilon, s.budget) == (("titanic",), 3, "iid", (1.0,), (4.0,))
    assert [s.client_id(i) for i in range(3)] == ["client-000", "client-001", "client-002"]


def test_clients_spread_round_robin_over_tables_and_lists_cycle():
    s = Scenario.from_run_config({"data": "titanic,default", "clients": 5, "epsilon": "1,none", "budget": "4,inf,2"})
    assert [s.table_index(i) for i in range(5)] == [0, 1, 0, 1, 0]
    assert [s.part_of(i) for i in range(5)] == [(0, 3), (0, 2), (1, 3), (1, 2), (2, 3)]
    assert [s.epsilon_for(i) for i in range(5)] == [1.0, None, 1.0, None, 1.0]
    assert [s.budget_for(i) for i in range(4)] == [4.0, float("inf"), 2.0, 4.0]


@pytest.mark.parametrize("rc, key", [
    ({"partition": "random"}, "partition"),
    ({"epsilon": "1,zero"}, "epsilon"),
    ({"epsilon": "-1"}, "epsilon"),
    ({"budget": "none,"}, "budget"),
    ({"clients": 0}, "clients"),
    ({"data": "titanic,default", "clients": 1}, "clients"),
    ({"alpha": 0}, "alpha"),
    ({"faults": "7=crash"}, "faults"),
    ({"faults": "1=explode"}, "faults"),
    ({"preset": "fastest"}, "preset"),
    ({"preset": "{\"name\": \"x\", \"bogus\": 1}"}, "preset"),
    ({"provider-device": "tpu"}, "provider-device"),
    ({"on-invalid": "fix"}, "on-invalid"),
    ({"schema": "s.json", "data": "titanic,default", "clients": 2}, "schema"),
    ({"test-size": 0.9}, "test-size"),
    ({"out-dir": "runs/x"}, "out-dir"),
    ({"connectors": "store"}, "connectors"),
])
def test_a_bad_run_config_value_is_refused_naming_the_key_and_the_fix(rc, key):
    with pytest.raises(ScenarioError) as e:
        Scenario.from_run_config(rc).preset_value()
    assert e.value.code == "BAD_RUN_CONFIG" and e.value.rule == key and f"{key!r}" in str(e.value) and ";" in str(e.value)


@pytest.mark.parametrize("launcher", ["simulation", "deployment"])
@pytest.mark.parametrize("rc, key", [({"connectors": "relative/store"}, "connectors"), ({"federated": "credit"}, "federated"),
                                     ({"preset": "huge"}, "preset")])
def test_a_launcher_refuses_a_bad_run_config_before_starting_anything(launcher, rc, key, tmp_path, monkeypatch):
    """The ServerApp would refuse it too, but only after a SuperLink, Ray and the processes started, in flwr.log."""
    from simulations.flower import deployment, launcher as sim_launcher

    started = []
    monkeypatch.setattr(sim_launcher, "stream_process", lambda *a, **k: started.append(a))
    monkeypatch.setattr(deployment.subprocess, "Popen", lambda *a, **k: started.append(a))
    run = sim_launcher.run_simulation if launcher == "simulation" else deployment.run_deployment
    with pytest.raises(ScenarioError) as e:
        run({"data": "titanic", **rc}, clients=2, out_dir=tmp_path / "run")
    assert e.value.code == "BAD_RUN_CONFIG" and e.value.rule == key
    assert started == [] and not (tmp_path / "run").exists()


def _earlier_run(folder):
    """The files a completed run leaves (the ones a rerun destroyed): its provider key and its report."""
    (folder / "provider" / "keys").mkdir(parents=True)
    (folder / "provider" / "keys" / "provider.key").write_text("the earlier run's key")
    (folder / "report.json").write_text('{"status": "completed", "run_id": "earlier"}')
    return {p: p.read_bytes() for p in folder.rglob("*") if p.is_file()}


@pytest.mark.parametrize("launcher", ["simulation", "deployment"])
def test_a_launcher_refuses_the_folder_of_an_earlier_run_and_changes_nothing_in_it(launcher, tmp_path, monkeypatch):
    """A rerun into one --out replaced the provider key (its ledger then read as LEDGER_CORRUPT) and the report; killed
    early, it passed the earlier report off as its own with exit 0."""
    from simulations.flower import deployment, launcher as sim_launcher

    before = _earlier_run(tmp_path)
    started = []
    monkeypatch.setattr(sim_launcher, "stream_process", lambda *a, **k: started.append(a))
    monkeypatch.setattr(deployment.subprocess, "Popen", lambda *a, **k: started.append(a))
    run = sim_launcher.run_simulation if launcher == "simulation" else deployment.run_deployment
    with pytest.raises(ScenarioError) as e:
        run({"data": "titanic"}, clients=2, out_dir=tmp_path)
    assert e.value.code == "OUT_DIR_IN_USE" and "an earlier run" in str(e.value)
    assert started == [] and {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()} == before


def test_the_server_app_refuses_an_earlier_runs_folder_but_not_its_launchers_own_files(tmp_path):
    """`flwr run .` with an out-dir of an earlier run reaches the ServerApp, which starts after the launcher wrote its
    run-config.toml, flwr.log and flwr-home there."""
    from simulations.flower.scenario import refuse_an_earlier_run

    (tmp_path / "run-config.toml").write_text("clients = 3\n")
    (tmp_path / "flwr-home").mkdir()
    refuse_an_earlier_run(tmp_path, any_file=False)
    with pytest.raises(ScenarioError, match="already holds"):
        refuse_an_earlier_run(tmp_path, any_file=True)
    _earlier_run(tmp_path)
    with pytest.raises(ScenarioError, match="an earlier run"):
        refuse_an_earlier_run(tmp_path, any_file=False)


def test_simulate_refuses_a_used_out_folder_before_it_starts(tmp_path, capsys, monkeypatch):
    from simulations.cli.main import main
    from simulations.flower import launcher

    before = _earlier_run(tmp_path / "run")
    monkeypatch.setattr(launcher, "stream_process", lambda *a, **k: pytest.fail("a Flower process was started"))
    assert main(["simulate", "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert "[OUT_DIR_IN_USE]" in err and "give each run a new folder" in err, err
    assert {p: p.read_bytes() for p in (tmp_path / "run").rglob("*") if p.is_file()} == before


def test_a_run_stopped_at_its_timeout_says_so_at_once_and_does_not_pass_for_finished(tmp_path, capsys, monkeypatch):
    """`--timeout 10` returned after 1 min 48 s (waits for a report and an orderly shutdown that could not come) and
    said only "the run wrote no report"."""
    import time

    from simulations.cli.main import main
    from simulations.flower import launcher

    def killed_at_the_limit(cmd, env, log_path, on_line, timeout_s, cwd=None):
        log_path.write_text("[llamdex] phase=connect done=3 total=3\n[llamdex] phase=register done=0 total=3\n")
        time.sleep(timeout_s + 0.1)
        return -9

    monkeypatch.setattr(launcher, "stream_process", killed_at_the_limit)
    t = time.monotonic()
    assert main(["simulate", "--out", str(tmp_path / "run"), "--timeout", "1"]) == 1
    assert time.monotonic() - t < 20   # the stopping of leftovers (none here), not 30 s for a report and 60 s for Ray
    err = capsys.readouterr().err
    assert "reached --timeout 1 s in phase register and was stopped" in err and "no report" not in err, err


def test_an_interrupted_run_names_its_phase_and_what_its_folder_keeps(tmp_path, capsys, monkeypatch):
    """SIGTERM or Ctrl-C mid-run: the ServerApp is stopped before it writes a report, so the command says where it was."""
    from simulations.cli.main import Terminated, main
    from simulations.flower import launcher

    def terminated_in_train(cmd, env, log_path, on_line, timeout_s, cwd=None):
        log_path.write_text("[llamdex] phase=register done=3 total=3\n[llamdex] phase=train done=1 total=3\n")
        raise Terminated()

    monkeypatch.setattr(launcher, "stream_process", terminated_in_train)
    assert main(["simulate", "--out", str(tmp_path / "run")]) == 143
    err = capsys.readouterr().err
    assert "stopped in phase train; the run wrote no report" in err and "llamdex audit --ledger" in err, err


def test_a_federation_must_name_a_table_of_the_run_with_two_clients():
    assert Scenario.from_run_config({"clients": 3, "federated": "all"}).federated_tables() == [0]
    with pytest.raises(ScenarioError, match="is not one of the run's tables"):
        Scenario.from_run_config({"federated": "credit"}).federated_tables()
    with pytest.raises(ScenarioError, match="at least two clients"):
        Scenario.from_run_config({"data": "titanic,default", "clients": 3, "federated": "default"}).federated_tables()


def test_the_invalid_record_policy_rides_on_every_table_of_the_run():
    assert Scenario.from_run_config({}).table_refs()[0].on_invalid == "reject"
    refs = Scenario.from_run_config({"data": "titanic,default", "clients": 2, "on-invalid": "drop"}).table_refs()
    assert [r.on_invalid for r in refs] == ["drop", "drop"]


def test_a_missing_table_file_is_refused_with_the_registered_names():
    with pytest.raises(ScenarioError, match="neither a registered table"):
        Scenario.from_run_config({"data": "nosuch.csv"}).table_refs()


# --- partitions -----------------------------------------------------------------------------------------------


def test_iid_parts_are_disjoint_cover_the_table_and_differ_by_at_most_one_row():
    from simulations.flower.partitioning import iid_partition

    parts = iid_partition(103, 4, seed=0)
    rows = np.concatenate(parts)
    assert sorted(rows.tolist()) == list(range(103)) and max(map(len, parts)) - min(map(len, parts)) <= 1


def test_dirichlet_parts_are_seeded_disjoint_and_skewed_by_a_small_alpha():
    from simulations.flower.partitioning import dirichlet_partition

    labels = np.repeat([0, 1], 500)
    skew = dirichlet_partition(labels, 5, alpha=0.1, seed=3)
    flat = dirichlet_partition(labels, 5, alpha=100.0, seed=3)
    assert [p.tolist() for p in skew] == [p.tolist() for p in dirichlet_partition(labels, 5, alpha=0.1, seed=3)]
    assert sorted(np.concatenate(skew).tolist()) == list(range(1000)) and min(map(len, skew)) >= 10

    def spread(parts):   # mean distance of each part's share of class 1 from the table's 0.5
        return float(np.mean([abs(labels[p].mean() - 0.5) for p in parts]))

    assert spread(skew) > 0.2 > 0.05 > spread(flat)


def test_a_partition_that_cannot_give_every_client_rows_is_refused():
    from simulations.flower.partitioning import dirichlet_partition

    with pytest.raises(ScenarioError, match="raise 'alpha', lower 'clients'"):
        dirichlet_partition(np.repeat([0, 1], 30), 5, alpha=0.01, seed=0)


# --- the upload stream on the provider's real upload path ----------------------------------------------------


@pytest.fixture
def provider(tmp_path):
    """A provider core with one registered client (no base LLM needed to receive uploads)."""
    from protocol.keys import generate_private_key, save_private_key
    from provider_party.service.config import ProviderConfig, RegisteredClient
    from provider_party.service.core import ProviderParty

    pkey, ckey = generate_private_key(), generate_private_key()
    save_private_key(pkey, tmp_path / "provider.key")
    party = ProviderParty(ProviderConfig(key=tmp_path / "provider.key", state=tmp_path / "state", connectors=tmp_path / "conn", preload=False,
                                         clients=(RegisteredClient("client-000", ckey.public_key(), epsilon_budget=4.0),)))
    yield party, ckey, pkey
    party.close()


def _artifact_tar(tmp_path, key, epsilon=1.0):
    from client_party.datasets import encode_table, load_table
    from client_party.expert_training import TrainConfig, train_expert
    from protocol.artifact import pack_artifact, write_artifact

    df, schema = load_table("titanic")
    x, y = encode_table(df.iloc[:200], schema)
    cfg = TrainConfig(epochs=1) if epsilon is None else TrainConfig.private(epsilon, epochs=2)
    t = train_expert(x, y, schema, cfg)
    return pack_artifact(write_artifact(tmp_path / "art", t.model, schema, t.dp, key, model_name="a"))


def test_a_flower_upload_goes_through_the_providers_upload_path_to_a_signed_receipt(tmp_path, provider):
    from protocol.receipts import verify_receipt
    from simulations.flower.upload_stream import parse_upload, upload_messages

    party, ckey, pkey = provider
    blobs = upload_messages(ckey, "client-000", _artifact_tar(tmp_path, ckey), "titanic", "expert-titanic", chunk_bytes=64 << 10)
    assert len(blobs) > 2   # a header and several chunks, each with its own digest
    up = parse_upload(blobs)
    out = party.receive_upload(party.config.client("client-000"), up.header, up.chunks)
    assert out.complete and "epsilon recomputed" in out.checks and "budget charged, receipt signed" in out.checks
    r = verify_receipt(out.record.receipt, pkey.public_key())
    assert r.client_id == "client-000" and 0 < r.epsilon_recomputed <= 1.0


def test_a_replayed_upload_header_is_refused_like_on_the_grpc_path(tmp_path, provider):
    from simulations.flower.upload_stream import parse_upload, upload_messages

    party, ckey, _ = provider
    blobs = upload_messages(ckey, "client-000", _artifact_tar(tmp_path, ckey), "titanic", "expert-titanic")
    client = party.config.client("client-000")
    up = parse_upload(blobs)
    party.receive_upload(client, up.header, up.chunks)
    again = parse_upload(blobs)
    with pytest.raises(Exception, match="REPLAYED_REQUEST"):
        party.receive_upload(client, again.header, again.chunks)


def test_a_header_signed_by_another_key_is_refused_before_any_chunk_is_stored(tmp_path, provider):
    from protocol.keys import generate_private_key
    from simulations.flower.upload_stream import parse_upload, upload_messages

    party, ckey, _ = provider
    stranger = generate_private_key()
    up = parse_upload(upload_messages(stranger, "client-000", _artifact_tar(tmp_path, ckey), "titanic", "expert-titanic"))
    with pytest.raises(Exception, match="BAD_REQUEST_SIGNATURE"):
        party.receive_upload(party.config.client("client-000"), up.header, up.chunks)
    assert party.ledger.entries(client_id="client-000")[0] == []


def test_bytes_that_are_not_an_upload_stream_are_refused_with_the_rule():
    from simulations.flower.upload_stream import UploadStreamError, parse_upload

    with pytest.raises(UploadStreamError, match="first upload message must be an UploadHeader"):
        parse_upload([b""])
    with pytest.raises(UploadStreamError, match="carries no message"):
        parse_upload([])


# --- the command line -----------------------------------------------------------------------------------------


def test_simulate_flags_become_the_run_config_keys_of_pyproject():
    import tomllib
    from pathlib import Path

    from simulations.cli.main import build_parser
    from simulations.cli.simulate import run_config_from_args

    args = build_parser().parse_args(["simulate", "--data", "titanic,default", "--clients", "4", "--epsilon", "1,none", "--federated", "titanic",
                                      "--partition", "dirichlet", "--alpha", "0.3"])
    rc = run_config_from_args(args)
    keys = tomllib.loads((Path(__file__).resolve().parents[1] / "pyproject.toml").read_text())["tool"]["flwr"]["app"]["config"]
    assert set(rc) <= set(keys)   # flwr refuses an override key the app does not declare
    assert (rc["data"], rc["clients"], rc["epsilon"], rc["federated"], rc["partition"], rc["alpha"]) == ("titanic,default", 4, "1,none", "titanic",
                                                                                                         "dirichlet", 0.3)


@pytest.mark.parametrize("flags, key", [(["--federated", "credit"], "federated"), (["--preset", "huge"], "preset"),
                                        (["--data", "titanic,default", "--clients", "1"], "clients")])
def test_simulate_refuses_a_bad_run_config_with_a_message_and_starts_nothing(flags, key, tmp_path, capsys, monkeypatch):
    """The command makes the ServerApp's own checks (check_run_config) before it launches: exit 2, one line, no run folder."""
    from simulations.cli.main import main
    from simulations.flower import launcher

    monkeypatch.setattr(launcher, "stream_process", lambda *a, **k: pytest.fail("a Flower process was started"))
    assert main(["simulate", "--out", str(tmp_path / "run"), *flags]) == 2
    err = capsys.readouterr().err
    assert "BAD_RUN_CONFIG" in err and f"{key!r}" in err and "Traceback" not in err
    assert not (tmp_path / "run").exists()


def test_simulate_names_a_missing_table_as_a_missing_file(tmp_path, capsys):
    """Exit 4, as `client train` says the same table is missing (it was 2, bad usage)."""
    from simulations.cli.main import main

    assert main(["simulate", "--data", str(tmp_path / "nope.csv"), "--out", str(tmp_path / "run")]) == 4
    assert "nope.csv' is neither a registered table" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


def test_a_csv_table_with_its_schema_joins_a_registered_table_in_one_run(tmp_path):
    """Several schemas at once: client 0 holds part of titanic, client 1 the whole of a CSV file described by the schema beside it."""
    from client_party.datasets import DATASETS, load_table
    from simulations.flower.simulated_client import SimulatedClient

    df, _ = load_table("default")
    csv = tmp_path / "loans.csv"
    df.iloc[:300].to_csv(csv, index=False)
    (tmp_path / "loans.csv.schema.json").write_text(DATASETS["default"].schema_path.read_text())
    s = Scenario.from_run_config({"data": f"titanic,{csv}", "clients": 2})
    titanic, loans = (SimulatedClient(s, i, tmp_path).data() for i in (0, 1))
    assert (titanic.table_id, loans.table_id) == ("titanic", "loans")
    assert titanic.schema.digest != loans.schema.digest
    assert len(loans.train) + len(loans.heldout) == 300


def test_phase_progress_lines_become_one_bar_per_phase():
    import io

    from simulations.flower.progress import ProgressBars, parse_progress

    assert parse_progress("INFO: [llamdex] phase=train done=3 total=50 note=client-002 crashed\n") == ("train", 3, 50, "client-002 crashed")
    assert parse_progress("[llamdex] excluded client-002: crashed") is None
    bars = ProgressBars(file=io.StringIO())
    assert bars.feed("[llamdex] phase=register done=1 total=2") and bars.feed("[llamdex] phase=train done=2 total=2")
    assert not bars.feed("some other log line")
    assert list(bars.bars) == ["register", "train"] and bars.bars["train"].n == 2
    bars.close()


def test_simulation_docs_list_every_run_config_key_of_the_app():
    """docs/SIMULATION.md's run-config table is where a user looks a key up: a key added to pyproject.toml's
    [tool.flwr.app.config] without a row there (or a row for a key that is gone) fails here."""
    import re
    import tomllib
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    keys = set(tomllib.loads((root / "pyproject.toml").read_text())["tool"]["flwr"]["app"]["config"])
    doc = (root / "docs" / "SIMULATION.md").read_text()
    table = doc[doc.index("| key | default | meaning |"):]
    table = table[:table.index("\n\n")]
    documented = {k for line in table.splitlines()[2:] for k in re.findall(r"`([a-z-]+)`", line.split(" | ")[0])}
    assert keys - documented == set(), f"run-config keys missing from docs/SIMULATION.md: {sorted(keys - documented)}"
    assert documented - keys == set(), f"docs/SIMULATION.md documents keys the app does not have: {sorted(documented - keys)}"


def test_a_client_apps_failure_on_its_own_bad_table_reaches_the_server_app_without_a_value(tmp_path):
    """Flower sends a ClientApp's exception text to the ServerApp (the provider's side): every handler of the app
    turns a schema violation of the client's own table into counts, kinds and public columns."""
    import inspect
    import json

    from client_party.datasets import load_schema, load_table
    from protocol.errors import CodedError
    from simulations.flower import client_app

    handlers = [f for n, f in vars(client_app).items() if inspect.isfunction(f) and not n.startswith("_") and f.__module__ == client_app.__name__]
    assert len(handlers) >= 7 and all(getattr(f, "__wrapped__", None) is not None for f in handlers)
    table = tmp_path / "payroll.csv"
    table.write_text("sex,age,passengerClass,survived\nfemale,29,1st,yes\nmale,73981244551902,3rd,no\nmale,abc,2nd,no\n")
    (tmp_path / "payroll.csv.schema.json").write_text(json.dumps(load_schema("titanic").to_dict()))

    @client_app._keeps_values_private
    def loads_its_table(msg, context):
        load_table(path=table)

    with pytest.raises(CodedError) as ei:
        loads_its_table(None, None)
    assert ei.value.code == "DATA_INVALID" and "2 problem(s)" in str(ei.value)
    assert "73981244551902" not in str(ei.value) and "abc" not in str(ei.value) and "payroll" not in str(ei.value)


@pytest.mark.parametrize("flags, said", [(["--data", "NOSCHEMA"], "has no usable schema"),
                                         (["--data", "titanic", "--schema", "MISSING"], "'schema'"),
                                         (["--provider-device", "cuda:x"], "must be cpu, cuda or cuda:N"),
                                         (["--timeout", "-5"], "positive finite number"),
                                         (["--num-gpus", "nan"], "non-negative finite number"),
                                         (["--num-cpus", "0"], "at least 1"),
                                         (["--preset", '{"name": "t", "encoder_lr": -1}'], "'encoder_lr' must be above 0"),
                                         (["--preset", '{"name": 3}'], "'name' must be a non-empty string"),
                                         (["--clients", "1000"], "table titanic: a table of 1309 rows cannot give 1000 clients"),
                                         (["--clients", "80", "--partition", "dirichlet", "--alpha", "0.01"], "left some client below 10 rows")])
def test_simulate_refuses_values_that_used_to_reach_a_run(flags, said, tmp_path, capsys, monkeypatch):
    """Each of these passed the command's checks and would have started Flower: a table without its schema failed in
    every ClientApp, `cuda:x` on the provider, and a negative timeout or 0 CPUs were silently replaced."""
    from simulations.cli.main import main
    from simulations.flower import launcher

    (tmp_path / "t.csv").write_text("a,b\n1,2\n")
    flags = [f.replace("NOSCHEMA", str(tmp_path / "t.csv")).replace("MISSING", str(tmp_path / "nope.json")) for f in flags]
    monkeypatch.setattr(launcher, "stream_process", lambda *a, **k: pytest.fail("a Flower process was started"))
    try:
        code = main(["simulate", "--out", str(tmp_path / "run"), *flags])
    except SystemExit as e:
        code = e.code
    err = capsys.readouterr().err
    assert code == 2 and said in err and "Traceback" not in err, (code, err)
    assert not (tmp_path / "run").exists()


def test_an_ask_batch_above_the_providers_limit_is_refused_before_any_client_spends():
    """Every client was excluded at evaluation (the provider takes 64 questions per Ask), after its ε was charged."""
    from simulations.flower.scenario import check_run_config

    check_run_config({"ask-batch": 64})
    with pytest.raises(ScenarioError, match="'ask-batch' = 65: is above the provider's 64 questions per Ask"):
        check_run_config({"ask-batch": 65})


def test_two_tables_of_one_dataset_id_are_refused(tmp_path):
    """Two files named loans.csv in two folders were one table: their federations mixed, and the figures were wrong."""
    from client_party.datasets import load_table
    from simulations.flower.scenario import check_run_config

    df, schema = load_table("titanic")
    for folder in ("a", "b"):
        (tmp_path / folder).mkdir()
        df.iloc[:200].to_csv(tmp_path / folder / "loans.csv", index=False)
        schema.save(tmp_path / folder / "loans.csv.schema.json")
    check_run_config({"data": f"{tmp_path / 'a' / 'loans.csv'},titanic", "clients": 2})
    for data in (f"{tmp_path / 'a' / 'loans.csv'},{tmp_path / 'b' / 'loans.csv'}", "titanic,titanic"):
        with pytest.raises(ScenarioError, match="are both dataset"):
            check_run_config({"data": data, "clients": 2})
