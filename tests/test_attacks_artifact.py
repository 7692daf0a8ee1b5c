"""Attacks on a real artifact made by `llamdex client train`: verified first, attacked with the records it was
trained on and records it was not, from the provider seat and through a running provider's Ask."""

from __future__ import annotations

import json

import pytest

from client_party.datasets import load_table, split_table
from simulations.cli.main import main


def _train_flag(name: str) -> list[str]:
    """`llamdex client train` names its table with --data (or the older --dataset)."""
    from simulations.cli.main import build_parser

    sub = next(a for a in build_parser()._actions if a.dest == "command").choices["client"]
    train = next(a for a in sub._actions if getattr(a, "choices", None) and "train" in a.choices).choices["train"]
    flags = {o for a in train._actions for o in a.option_strings}
    return ["--dataset", name] if "--dataset" in flags else ["--data", name]


@pytest.fixture(scope="module")
def artifact(tmp_path_factory):
    """A DP expert (ε = 1, 5 epochs) trained and signed by `llamdex client train` on Titanic's training split
    (seed 0), and the auditor's record files: that split (members) and the held-out split (non-members)."""
    root = tmp_path_factory.mktemp("artifact-attacks")
    keys, art = root / "keys", root / "titanic-eps1"
    assert main(["keygen", "--name", "alice", "--out", str(keys)]) == 0
    assert main(["client", "train", *_train_flag("titanic"), "--epsilon", "1", "--epochs", "5", "--seed", "0", "--out", str(art),
                 "--key", str(keys / "alice.key")]) == 0
    df, schema = load_table("titanic")
    train, test = split_table(df, schema, seed=0)
    train.to_csv(root / "members.csv", index=False)
    test.to_parquet(root / "nonmembers.parquet", index=False)
    return {"root": root, "art": art, "pub": keys / "alice.pub", "key": keys / "alice.key", "members": root / "members.csv",
            "nonmembers": root / "nonmembers.parquet", "n_train": len(train), "n_test": len(test)}


def target_args(a) -> list[str]:
    return ["--artifact", str(a["art"]), "--client-key", str(a["pub"]), "--members", str(a["members"]), "--nonmembers", str(a["nonmembers"])]


def test_mia_on_an_artifact_reports_every_offline_attack_with_intervals(artifact, capsys):
    out = artifact["root"] / "mia.json"
    assert main(["attack", "mia", *target_args(artifact), "--shadows", "2", "--population", "100", "--json", str(out)]) == 0
    data = json.loads(out.read_text())
    assert data["digest"].startswith("sha256:") and data["dp"]["mechanism"] == "dp-sgd" and data["dp"]["epsilon"] <= 1.0
    assert data["members"] == artifact["n_train"] and data["nonmembers_attacked"] == artifact["n_test"] - artifact["n_test"] // 2
    attacks = {r["attack"] for r in data["results"]}
    assert attacks == {"loss", "confidence", "entropy", "modified_entropy", "margin", "lira_offline", "rmia_offline"}
    for r in data["results"]:
        assert r["seat"] == "provider" and r["auc_ci"][0] <= r["auc"] <= r["auc_ci"][1]
        assert r["tpr@1%fpr_ci"][0] <= r["tpr@1%fpr"] <= r["tpr@1%fpr_ci"][1]
    assert "half of the non-members" in data["shadow_pool"]
    assert "verified" in capsys.readouterr().out


def test_a_public_table_can_train_the_shadows(artifact, tmp_path):
    df, schema = load_table("titanic")
    _, test = split_table(df, schema, seed=0)
    public = tmp_path / "public.csv"
    test.iloc[:150].to_csv(public, index=False)
    out = tmp_path / "mia.json"
    assert main(["attack", "mia", *target_args(artifact), "--data", str(public), "--schema", str(artifact["art"] / "schema.json"),
                 "--shadows", "2", "--attacks", "loss,lira_offline", "--json", str(out)]) == 0
    data = json.loads(out.read_text())
    assert data["shadow_pool"].startswith("public table (150") and data["nonmembers_attacked"] == artifact["n_test"]


def test_json_alone_puts_the_results_and_nothing_else_on_standard_output(artifact, capsys):
    assert main(["attack", "attribute", *target_args(artifact), "--json"]) == 0
    out, err = capsys.readouterr()
    assert json.loads(out)["column"] == "sex"         # the whole of standard output is one JSON document
    assert "advantage over the population" in err     # the report is still shown, on standard error


def test_attribute_and_canary_on_an_artifact(artifact, tmp_path, capsys):
    out = tmp_path / "attr.json"
    assert main(["attack", "attribute", *target_args(artifact), "--json", str(out)]) == 0
    attr = json.loads(out.read_text())
    assert attr["column"] == "sex" and "advantage_ci" in attr and "membership_gap_ci" in attr
    out = tmp_path / "canary.json"
    assert main(["attack", "canary", "--artifact", str(artifact["art"]), "--client-key", str(artifact["pub"]),
                 "--members", str(artifact["members"]), "--canaries", "100", "--json", str(out)]) == 0
    runs = json.loads(out.read_text())["runs"]
    assert [r["kind"] for r in runs] == ["input-space", "gradient"]
    assert all(r["epsilon_lb"] <= r["epsilon_claimed"] for r in runs)


@pytest.mark.parametrize("argv,message", [
    (["attack", "mia"], "name the target"),
    (["attack", "mia", "--artifact", "x"], "--artifact needs --client-key, --members, --nonmembers"),
    (["attack", "mia", "--data", "titanic", "--members", "m.csv"], "record files for --artifact"),
    (["attack", "mia", "--data", "titanic", "--provider", "127.0.0.1:1"], "give --artifact"),
])
def test_bad_target_flags_are_refused_with_the_rule(argv, message, capsys):
    assert main(argv) == 2
    assert message in capsys.readouterr().err


def test_an_artifact_that_does_not_verify_is_not_attacked(artifact, tmp_path, capsys):
    import shutil

    forged = tmp_path / "forged"
    shutil.copytree(artifact["art"], forged)
    (forged / "dp.json").write_text((forged / "dp.json").read_text().replace('"steps"', '"steps" ', 1))
    rc = main(["attack", "mia", "--artifact", str(forged), "--client-key", str(artifact["pub"]), "--members", str(artifact["members"]),
               "--nonmembers", str(artifact["nonmembers"]), "--shadows", "0"])
    assert rc == 5 and "dp.json" in capsys.readouterr().err   # verification failed (exit 1 is the attack's own finding)


def test_records_under_another_schema_are_refused(artifact, tmp_path, capsys):
    df, _ = load_table("credit")
    other = tmp_path / "credit.csv"
    df.iloc[:100].to_csv(other, index=False)
    rc = main(["attack", "mia", "--artifact", str(artifact["art"]), "--client-key", str(artifact["pub"]), "--members", str(other),
               "--nonmembers", str(artifact["nonmembers"]), "--shadows", "0"])
    err = capsys.readouterr().err
    assert rc == 3 and "--members" in err and "survived (missing_column: 1)" in err   # invalid input, no record value shown


@pytest.mark.slow
def test_query_seat_through_a_running_providers_ask(artifact, tmp_path, capsys):
    """The artifact's owner uploads it to a provider (tiny connectors, mutual TLS) and attacks it through Ask
    (about 90 s on 2 cores: connector training and 60 questions through the LLM)."""
    from provider_party.service.server import ProviderServer
    from tests._grpc_fixtures import make_parties, provider_client, provider_config

    p = make_parties(tmp_path, names=("provider", "alice"))
    # the artifact was signed with the fixture's own key: register that key as alice's
    from protocol.keys import load_private_key

    p.keys["alice"] = load_private_key(artifact["key"])
    provider = ProviderServer(provider_config(p, clients=("alice",))).start()
    try:
        with provider_client(p, provider.address, "alice") as pc:
            digest = pc.upload(artifact["art"], "titanic").artifact_digest
            job = pc.customize(digest)
            events = list(pc.watch_job(job.job_id, timeout_s=600))
            assert events and events[-1].result.schema_digest
        tls = p.tls["alice"]
        out = tmp_path / "mia.json"
        rc = main(["attack", "mia", *target_args(artifact), "--shadows", "0", "--query", "30", "--provider", provider.address, "--id", "alice",
                   "--key", str(artifact["key"]), "--ca", str(tls.ca), "--cert", str(tls.cert), "--tls-key", str(tls.key),
                   "--provider-key", str(p.pubs["provider"]), "--json", str(out)])
    finally:
        provider.stop()
    assert rc == 0, capsys.readouterr()
    data = json.loads(out.read_text())
    query = [r for r in data["results"] if r["seat"] == "query"]
    assert {r["attack"] for r in query} == {"loss", "confidence", "entropy", "modified_entropy", "margin"}
    assert all(r["n_members"] == 30 and r["n_nonmembers"] == 30 and r["auc_ci"][0] <= r["auc"] <= r["auc_ci"][1] for r in query)
    assert "query" in data["best"]
