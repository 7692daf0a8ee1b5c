"""What a bad-input sweep of the tool verbs found (2026-12): `attack` answered every refusal with exit 1 (its finding),
flags the tools could not take ended as internal errors (exit 70) after minutes of work, a refused `hosts bundle`
left half a bundle, `health --wait nan` never returned, and SIGTERM left a benchmark's servers and key folders behind.

Each case is checked before any training or server starts, so the module runs in seconds."""

from __future__ import annotations

import os
import signal
import time

import pytest

from simulations.cli import main as cli


def run(argv: list[str], capsys) -> tuple[int, str]:
    try:
        code = cli.main(argv)
    except SystemExit as e:   # argparse's own refusals
        code = e.code
    return code, capsys.readouterr().err


@pytest.mark.parametrize("argv, said", [
    (["attack", "canary", "--data", "titanic", "--canaries", "1"], "2 canaries or more"),
    (["attack", "canary", "--data", "titanic", "--confidence", "0"], "--confidence"),
    (["attack", "canary", "--data", "titanic", "--confidence", "1.5"], "between 0 and 1"),
    (["attack", "canary", "--data", "titanic", "--seeds", "0"], "--seeds"),
    (["attack", "mia", "--data", "titanic", "--population", "0"], "--population"),
    (["attack", "mia", "--data", "titanic", "--shadows", "-1"], "--shadows"),
    (["attack", "mia", "--data", "titanic", "--shadows", "0", "--attacks", "loss,lira_online"], "lira_online need shadow experts"),
    (["attack", "mia", "--data", "titanic", "--epsilon", "nan"], "--epsilon"),
    (["bench", "inference", "--batch-sizes", "1.5"], "--batch-sizes"),
    (["bench", "inference", "--batch-sizes", ","], "--batch-sizes"),
    (["bench", "inference", "--reps", "0"], "--reps"),
    (["bench", "privacy", "--data", "nosuch"], "name registered tables"),
    (["bench", "privacy", "--seats", ""], "--seats"),
    (["bench", "privacy", "--canaries", "0"], "--canaries"),
    (["bench", "protocol", "--links", "foo"], "capacity in Mbit/s"),
    (["bench", "reader", "--max-test", "0"], "--max-test"),
    (["bench", "compare", "--seeds", ","], "--seeds"),
    (["health", "127.0.0.1:1", "--plaintext", "--wait", "nan"], "--wait"),
    (["health", "127.0.0.1:1", "--plaintext", "--timeout", "-1"], "--timeout"),
    (["bench", "compare", "--curve-data", "titanik", "--dry-run"], "not tables of this run"),
    (["bench", "compare", "--data", "titanic", "--all-seeds-data", "credit", "--dry-run"], "not tables of this run"),
    (["bench", "compare", "--latency-epsilon", "nan", "--dry-run"], "--latency-epsilon"),
    (["bench", "compare", "--latency-reps", "0", "--dry-run"], "--latency-reps"),
    (["hosts", "check", "--config", "c.toml", "--timeout", "nan"], "--timeout"),
    (["demo", "--epsilon", "nan"], "--epsilon"),
    (["client", "train", "--data", "titanic", "--delta", "0"], "--delta"),
    (["client", "hello", "--wait", "-1"], "--wait"),
    (["client", "round", "--epsilon", "0"], "--epsilon"),
    (["client", "serve", "--max-epsilon", "inf"], "--max-epsilon"),
    (["audit", "--receipts", ".", "--canaries", "5000"], "--canaries applies only to the canary audit"),
    (["audit", "--receipts", ".", "--split-seed", "0", "--confidence", "0.9"], "--split-seed, --confidence apply only"),
])
def test_a_flag_the_tool_cannot_take_is_usage_before_any_work(argv, said, capsys, tmp_path, monkeypatch):
    """Each of these was accepted and ended later as exit 70 (a torch, numpy or sklearn error), or as exit 1, or never."""
    monkeypatch.chdir(tmp_path)
    code, err = run(argv, capsys)
    assert code == 2 and said in err and "internal error" not in err, (code, err)
    assert not any(tmp_path.iterdir())   # nothing written


def test_attack_refusals_take_the_status_every_verb_gives_them(tmp_path, capsys):
    """A missing key file was exit 1, the status `attack canary` gives a bound above the claimed ε."""
    (tmp_path / "art").mkdir()
    code, err = run(["attack", "mia", "--artifact", str(tmp_path / "art"), "--client-key", str(tmp_path / "nope.pub"),
                     "--members", "m.csv", "--nonmembers", "n.csv"], capsys)
    assert code == 4 and "nope.pub" in err, (code, err)
    (tmp_path / "outdir").mkdir()
    code, err = run(["attack", "mia", "--data", "titanic", "--roc", str(tmp_path / "outdir")], capsys)
    assert code == 4 and "is a folder" in err, (code, err)   # found before the shadows train, not after
    code, err = run(["attack", "mia", "--data", "titanic", "--roc", str(tmp_path / "roc.txt")], capsys)
    assert code == 2 and ".png, .pdf or .svg" in err, (code, err)


@pytest.mark.parametrize("flags, said", [(["--provider-host", "bad host"], "BAD_HOST"), (["--port", "65530"], "expected 1..65525"),
                                         (["--budget", "inf"], "positive finite"),
                                         # the client's certificate overwrote the provider's (or the monitor's): both parties
                                         # shared one TLS key; 'ca' was refused only after keys were written
                                         (["--client-id", "provider"], "a name the bundles use themselves"),
                                         (["--client-id", "monitor"], "a name the bundles use themselves"),
                                         (["--client-id", "ca"], "a name the bundles use themselves")])
def test_a_refused_host_bundle_writes_nothing(tmp_path, capsys, flags, said):
    """A bad host came after the keys were written, so the corrected rerun was refused ("already exist"); port 65530
    gave the client port 65540 and `inf` an unbounded budget, both written into the configs."""
    argv = ["hosts", "bundle", "--out", str(tmp_path / "hb"), "--provider-host", "127.0.0.1", "--client-host", "127.0.0.1", *flags]
    code, err = run(argv, capsys)
    assert code in (2, 3) and said in err, (code, err)
    assert not (tmp_path / "hb").exists()


def test_health_with_a_missing_config_is_a_missing_file(tmp_path, capsys):
    code, err = run(["health", "127.0.0.1:1", "--config", str(tmp_path / "nope.toml")], capsys)
    assert code == 4 and "nope.toml does not exist" in err, (code, err)


def test_sigterm_unwinds_a_command_as_ctrl_c_does_and_exits_143():
    """SIGTERM ended the process at once: `bench protocol`'s provider and raw server kept running (1.2 GB each) and its
    temporary folder kept the run's private keys."""
    cleaned = []
    with pytest.raises(cli.Terminated):
        with cli._sigterm_unwinds():
            try:
                os.kill(os.getpid(), signal.SIGTERM)
                time.sleep(5)
            finally:
                cleaned.append(True)   # a `finally` of the command runs: its children are stopped there
    assert cleaned and signal.getsignal(signal.SIGTERM) is signal.SIG_DFL
    report = cli.describe_error(cli.Terminated())
    assert report.exit_code == 143 and "SIGTERM" in report.line


def test_result_files_are_refused_inside_the_artifact_they_attack_or_audit(tmp_path, capsys):
    """`--json` / `--roc` inside the artifact folder added a file its signature does not name, so every later
    verification of that artifact failed."""
    art = tmp_path / "art"
    art.mkdir()
    (tmp_path / "k.pub").write_text("")
    for argv in (["audit", "--artifact", str(art), "--json", str(art / "report.json")],
                 ["attack", "mia", "--artifact", str(art), "--client-key", str(tmp_path / "k.pub"), "--members", "m.csv",
                  "--nonmembers", "n.csv", "--roc", f"{art}/./roc.png"]):
        code, err = run(argv, capsys)
        assert code == 2 and "which this command reads" in err, (code, err)
    assert sorted(p.name for p in art.iterdir()) == []


def test_attack_sizes_shrink_to_fit_a_small_table_unless_given():
    """`attack mia|attribute --data titanic` (1309 rows), the help's own example, was refused at the default sizes."""
    import numpy as np

    from simulations.attacks.mia import DEFAULT_SIZES, balanced_inclusion, fitting_sizes, make_split

    assert fitting_sizes(4454) == DEFAULT_SIZES and fitting_sizes(4454, (300, None, None)) == (300, 500, 500)
    assert fitting_sizes(100, (300, None, 7)) == (300, 500, 7)   # chosen sizes are the caller's, even when they do not fit
    for n_rows in (3, 10, 40, 344, 1309, 1999):
        target, members, nonmembers = fitting_sizes(n_rows)
        assert target < DEFAULT_SIZES[0] and members <= target
        split = make_split(n_rows, target, members, nonmembers)
        inc = balanced_inclusion(16, len(split.challenge), np.random.default_rng([0, 1]))
        assert len(split.aux) >= target - inc.sum(1).min()   # every one of 16 shadows can be filled up to the target's size


def test_a_table_too_small_for_the_query_seat_is_said_before_connectors_train(tmp_path, capsys, monkeypatch):
    """`attack mia --query N` trained connectors (minutes) before the split was found not to fit the table."""
    monkeypatch.setenv("LLAMDEX_HOME", str(tmp_path / "home"))
    code, err = run(["attack", "mia", "--data", "penguins", "--target-size", "300", "--query", "5"], capsys)
    assert code == 3 and "cannot exceed target_size" in err, (code, err)
    assert not (tmp_path / "home").exists()


def test_an_attack_on_a_handful_of_records_is_refused_rather_than_reported(tmp_path, capsys):
    """On a 10-record table the sizes shrank to 1 member and 1 non-member, and the bootstrap's zero-width interval
    reported "leaks (an interval lies above 0)"."""
    from client_party.datasets import load_table

    df, schema = load_table("titanic")
    df.head(40).to_csv(tmp_path / "few.csv", index=False)
    schema.save(tmp_path / "few.csv.schema.json")
    code, err = run(["attack", "attribute", "--data", str(tmp_path / "few.csv")], capsys)
    assert code == 3 and "at least 20 of each are needed" in err, (code, err)


def test_a_provider_lost_during_customize_names_the_job_and_how_to_follow_it_again(monkeypatch, capsys):
    """A provider killed mid-job gave "UNAVAILABLE: Stream removed — check ... both sides trust the same CA", naming no
    job; rerunning `client round`, the obvious next step, spends ε again. The provider side is faked here: the part
    under test is what the command says when the stream breaks."""
    import grpc

    from protocol.wire import JOB_STATE_NAMES
    from simulations.cli import client_protocol

    running = next(k for k, v in JOB_STATE_NAMES.items() if v == "RUNNING")

    class Event:
        job_id, state, stage, fraction = "53d3feed", running, "stage 1: encoder", 0.42

    class Broken(grpc.RpcError):
        def code(self):
            return grpc.StatusCode.UNAVAILABLE

    class Party:
        def __init__(self, config):
            pass

        def customize(self, digest, preset):
            yield Event()
            raise Broken()

    monkeypatch.setattr("client_party.service.ClientParty", Party)
    monkeypatch.setattr(client_protocol, "config_from_args", lambda args: None)
    code, err = run(["client", "customize", "--config", "client.toml"], capsys)
    assert code == 7 and "connector job 53d3feed" in err and "llamdex client customize --config client.toml" in err, (code, err)
    assert "no ε is spent" in err and "same CA" not in err
