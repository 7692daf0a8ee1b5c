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
                                         (["--budget", "inf"], "positive finite")])
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
