"""The privacy–utility report is resumable: finished pieces and trained experts are cached and reused."""

from __future__ import annotations

import json

import pytest

from simulations.benchmarks.privacy_utility import Cache, main, measured_with, parse_args, piece_settings


def test_a_rerun_reuses_every_cached_piece_and_renders_the_same_report(tmp_path):
    argv = ["--data", "titanic", "--seats", "provider", "--epsilons", "none", "--shadows", "2", "--canaries", "50", "--canary-seeds", "1",
            "--broken-seeds", "0", "--no-anchor", "--cache", str(tmp_path / "cache"), "--out", str(tmp_path / "out")]
    assert main(argv) == 0
    cache = Cache(tmp_path / "cache", settings=piece_settings(parse_args(argv)))
    piece, weights = cache.path("titanic", None, "provider.json"), cache.path("titanic", None, "experts.safetensors")
    stamps = (piece.stat().st_mtime_ns, weights.stat().st_mtime_ns)
    first = json.loads((tmp_path / "out" / "attacks.json").read_text())
    assert main(argv) == 0
    assert (piece.stat().st_mtime_ns, weights.stat().st_mtime_ns) == stamps          # nothing retrained
    second = json.loads((tmp_path / "out" / "attacks.json").read_text())
    assert first["tables"] == second["tables"]
    run = second["tables"]["titanic"]["runs"][0]
    assert run["epsilon_target"] is None and run["best_mia"]["provider"]["auc_ci"] and run["canary"]["epsilon_lb"] > 0
    assert "titanic ε=none query seat" in second["meta"]["missing"]        # the query seat runs on its own (--seats query)
    assert all("auc_ci" in a and "tpr@1%fpr_ci" in a for a in run["mia"])


def test_pieces_cached_under_another_recipe_are_not_reused(tmp_path, monkeypatch):
    """Attacks on experts of an earlier recipe must not slip into a report about today's experts."""
    import client_party.expert_training as et

    today = Cache(tmp_path)
    today.save("titanic", 1.0, "provider.json", {"auc": 0.5})
    assert today.load("titanic", 1.0, "provider.json") == {"auc": 0.5}
    monkeypatch.setattr(et, "default_recipe_digest", lambda: "sha256:0123456789abcdef")
    assert Cache(tmp_path).load("titanic", 1.0, "provider.json") is None


def test_a_query_piece_is_reused_only_through_the_connector_set_served_now():
    """Same preset and the same tensors: a set retrained or redesigned since (another digest), or none stored yet, measures again."""
    piece = {"connectors": {"preset": "default", "inject_layer": 20, "weights": "sha256:aa"}, "mia": []}
    assert measured_with(piece, "default", "sha256:aa")
    assert not measured_with(piece, "quick", "sha256:aa")
    assert not measured_with(piece, "default", "sha256:bb") and not measured_with(piece, "default", None)
    assert not measured_with({"connectors": {"preset": "default"}, "mia": []}, "default", "sha256:aa")   # pieces from before the digest
    assert not measured_with(None, "default", "sha256:aa") and not measured_with({"mia": []}, "default", "sha256:aa")


def test_the_served_set_is_named_by_the_digest_of_its_tensors(tmp_path, base_llm, titanic_schema, tiny_connectors):
    import copy

    from provider_party.model.connector_store import ConnectorStore
    from simulations.benchmarks.privacy_utility import served_connectors

    args = parse_args(["--connectors", str(tmp_path)])
    assert served_connectors(titanic_schema, args, base_llm) is None
    ConnectorStore(tmp_path).save(base_llm, titanic_schema, tiny_connectors)
    first = served_connectors(titanic_schema, args, base_llm)
    assert first.startswith("sha256:") and served_connectors(titanic_schema, args, base_llm) == first
    retrained = copy.deepcopy(tiny_connectors)                         # the session's set stays as it is
    retrained.encoder.queries.data += 1.0
    ConnectorStore(tmp_path).save(base_llm, titanic_schema, retrained)
    assert served_connectors(titanic_schema, args, base_llm) != first


def test_the_bare_command_runs_both_seats_with_the_benchmarks_connectors():
    """`python -m simulations.benchmarks.privacy_utility` is the documented command of the published report."""
    args = parse_args([])
    assert args.seats == ["provider", "query"] and args.preset == "default" and args.connectors is None
    assert parse_args(["--connector-root", "/tmp/c"]).connectors.as_posix() == "/tmp/c"     # the older flag still works
    assert args.threads is None and parse_args(["--threads", "4"]).threads == 4


def test_a_thread_count_below_one_is_refused(capsys):
    with pytest.raises(SystemExit):
        parse_args(["--threads", "0"])
    assert "argument --threads: expected a number of at least 1, got 0" in capsys.readouterr().err


def test_pieces_of_another_split_are_not_reused(tmp_path):
    """A piece rests on one split of the table: other sizes or another seed measure other records."""
    Cache(tmp_path).save("titanic", 1.0, "provider.json", {"auc": 0.5})
    assert Cache(tmp_path, target=1000, challenge=500, seed=0).load("titanic", 1.0, "provider.json") == {"auc": 0.5}
    for other in ({"target": 500}, {"challenge": 200}, {"seed": 1}):
        assert Cache(tmp_path, **other).load("titanic", 1.0, "provider.json") is None


def test_pieces_measured_with_other_attack_settings_are_not_reused(tmp_path):
    """Shadows, population, canaries and query sizes change a piece's figures: a piece of other settings is another piece."""
    default = piece_settings(parse_args([]))
    Cache(tmp_path, settings=default).save("titanic", 1.0, "provider.json", {"auc": 0.5})
    Cache(tmp_path, settings=default).save("titanic", 1.0, "query.json", {"auc": 0.6})
    assert Cache(tmp_path, settings=piece_settings(parse_args([]))).load("titanic", 1.0, "provider.json") == {"auc": 0.5}
    for flag, value in (("--shadows", "8"), ("--population", "100"), ("--canaries", "200"), ("--canary-seeds", "1")):
        assert Cache(tmp_path, settings=piece_settings(parse_args([flag, value]))).load("titanic", 1.0, "provider.json") is None, flag
    for flag, value in (("--shadows", "8"), ("--query-records", "100"), ("--query-population", "50"), ("--query-shadows", "4")):
        assert Cache(tmp_path, settings=piece_settings(parse_args([flag, value]))).load("titanic", 1.0, "query.json") is None, flag
    # The experts (target and shadows) are a piece of their own: a run with other shadows trains its own set.
    Cache(tmp_path, settings=default).save("titanic", 1.0, "experts.json", {"shadows": 16})
    assert Cache(tmp_path, settings=piece_settings(parse_args(["--shadows", "8"]))).load("titanic", 1.0, "experts.json") is None
    assert Cache(tmp_path, settings=default).path("titanic", 1.0, "experts.safetensors") != \
        Cache(tmp_path, settings=piece_settings(parse_args(["--shadows", "8"]))).path("titanic", 1.0, "experts.safetensors")
    assert Cache(tmp_path, settings=piece_settings(parse_args(["--canaries", "200"]))).load("titanic", 1.0, "experts.json") == {"shadows": 16}
    # Settings a piece does not depend on leave it as it is: the query seat's sizes do not touch the provider seat.
    assert Cache(tmp_path, settings=piece_settings(parse_args(["--query-records", "100"]))).load("titanic", 1.0, "provider.json") == {"auc": 0.5}
