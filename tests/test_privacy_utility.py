"""The privacy–utility report is resumable: finished pieces and trained experts are cached and reused."""

from __future__ import annotations

import json

from simulations.benchmarks.privacy_utility import Cache, main, measured_with, parse_args


def test_a_rerun_reuses_every_cached_piece_and_renders_the_same_report(tmp_path):
    argv = ["--tables", "titanic", "--seats", "provider", "--epsilons", "none", "--shadows", "2", "--canaries", "50", "--canary-seeds", "1",
            "--broken-seeds", "0", "--no-anchor", "--cache", str(tmp_path / "cache"), "--out", str(tmp_path / "out")]
    assert main(argv) == 0
    cache = Cache(tmp_path / "cache")
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


def test_a_query_piece_is_reused_only_through_connectors_of_the_same_preset():
    piece = {"connectors": {"preset": "default", "inject_layer": 20}, "mia": []}
    assert measured_with(piece, "default")
    assert not measured_with(piece, "quick")
    assert not measured_with(None, "default") and not measured_with({"mia": []}, "default")


def test_the_bare_command_runs_both_seats_with_the_benchmarks_connectors():
    """`python -m simulations.benchmarks.privacy_utility` is the documented command of the published report."""
    args = parse_args([])
    assert args.seats == ["provider", "query"] and args.preset == "default" and args.connectors is None
    assert parse_args(["--connector-root", "/tmp/c"]).connectors.as_posix() == "/tmp/c"     # the older flag still works


def test_pieces_of_another_split_are_not_reused(tmp_path):
    """A piece rests on one split of the table: other sizes or another seed measure other records."""
    Cache(tmp_path).save("titanic", 1.0, "provider.json", {"auc": 0.5})
    assert Cache(tmp_path, target=1000, challenge=500, seed=0).load("titanic", 1.0, "provider.json") == {"auc": 0.5}
    for other in ({"target": 500}, {"challenge": 200}, {"seed": 1}):
        assert Cache(tmp_path, **other).load("titanic", 1.0, "provider.json") is None
