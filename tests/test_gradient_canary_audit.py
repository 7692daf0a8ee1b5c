"""The white-box one-run audit (gradient canaries) can fail: it catches a DP-SGD that adds a tenth of the
noise it claims, in every seed, and never bounds a correct run above its claim."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from client_party.datasets import encode_table, load_table
from client_party.expert_training import calibration_steps, prior_steps
from simulations.attacks.faults import weakened_noise
from simulations.attacks.gradient_canary import GradientCanaries, run_gradient_canary_audit
from simulations.attacks.mia import train_config

SEEDS = (0, 1, 2)


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def titanic_300():
    df, schema = load_table("titanic")
    x, y = encode_table(df, schema)
    rows = np.random.default_rng(0).permutation(len(x))[:300]
    return schema, x[rows], y[rows]


def audit(data, epsilon, seed, m=200, epochs=10):
    """Seeded DP noise: each seed's verdict is the same on every run, so a test cannot pass by luck."""
    schema, x, y = data
    return run_gradient_canary_audit(x, y, schema, train_config(epsilon, seed=seed, epochs=epochs), m=m, seed=seed, noise_seed=seed)


@pytest.mark.parametrize("seed", SEEDS)
def test_a_correct_dp_sgd_is_never_bounded_above_its_claim(titanic_300, seed):
    a = audit(titanic_300, 1.0, seed)
    print(f"seed {seed}: ε lower bound {a.epsilon_lb:.3f} <= claimed {a.epsilon_claimed:.3f}; canary AUC {a.canary_auc:.3f}")
    assert a.epsilon_claimed <= 1.0 and a.epsilon_lb <= a.epsilon_claimed and not a.exceeds_claim
    total = a.extra["total_steps"]
    c = calibration_steps(total, 0.1)
    assert a.extra["observed_steps"] == total - c - prior_steps(total, 0.05, c)   # the fit phase: every step but the counting and the calibration


@pytest.mark.parametrize("seed", SEEDS)
def test_a_dp_sgd_that_adds_a_tenth_of_its_noise_is_caught(titanic_300, seed):
    with weakened_noise(0.1):
        a = audit(titanic_300, 1.0, seed)
    print(f"seed {seed}, broken: ε lower bound {a.epsilon_lb:.3f} > claimed {a.epsilon_claimed:.3f}; canary AUC {a.canary_auc:.3f}")
    assert a.epsilon_claimed <= 1.0          # the statement is that of a correct run
    assert a.exceeds_claim and a.epsilon_lb > 1.5


def test_without_dp_the_canaries_are_separated_perfectly(titanic_300):
    a = audit(titanic_300, None, 0)
    assert a.epsilon_claimed is None and a.canary_auc == 1.0 and a.epsilon_lb > 2.5


def test_the_weakened_noise_is_undone_after_the_block(titanic_300):
    from opacus.optimizers.optimizer import DPOptimizer

    before = DPOptimizer.add_noise
    with weakened_noise(0.1):
        assert DPOptimizer.add_noise is not before
    assert DPOptimizer.add_noise is before
    with pytest.raises(ValueError, match="factor"):
        with weakened_noise(1.5):
            pass


def test_canaries_need_distinct_coordinates():
    obs = GradientCanaries(10, np.ones(10, bool), np.random.default_rng(0))
    with pytest.raises(ValueError, match="distinct coordinates"):
        obs.attach([torch.zeros(3)], sample_rate=0.1, max_grad_norm=1.0, noise_multiplier=1.0, expected_batch_size=10)


def _train_flag(name: str) -> list[str]:
    """`llamdex client train` names its table with --data (or the older --dataset)."""
    from simulations.cli.main import build_parser

    sub = next(a for a in build_parser()._actions if a.dest == "command").choices["client"]
    train = next(a for a in sub._actions if getattr(a, "choices", None) and "train" in a.choices).choices["train"]
    flags = {o for a in train._actions for o in a.option_strings}
    return ["--dataset", name] if "--dataset" in flags else ["--data", name]


def test_llamdex_audit_canary_fails_a_broken_implementation_and_names_the_artifact(tmp_path, capsys):
    """An artifact made by `llamdex client train` (ε = 1); the audit replays its statement: the correct code
    passes, the same code with a tenth of the noise fails and the FAIL line names the artifact."""
    from simulations.cli.main import main

    keys, art = tmp_path / "keys", tmp_path / "titanic-eps1"
    assert main(["keygen", "--name", "alice", "--out", str(keys)]) == 0
    assert main(["client", "train", *_train_flag("titanic"), "--epsilon", "1", "--epochs", "5", "--seed", "0",
                 "--out", str(art), "--key", str(keys / "alice.key")]) == 0
    audit = ["audit", "--canary", "--artifact", str(art), "--client-key", str(keys / "alice.pub"),
             "--data", "titanic", "--split-seed", "0", "--canaries", "200"]
    capsys.readouterr()
    assert main(audit) == 0
    out = capsys.readouterr().out
    assert "audit PASSED" in out and "canary audit" in out
    with weakened_noise(0.1):
        assert main(audit + ["--json", str(tmp_path / "audit.json")]) == 1
    out = capsys.readouterr().out
    fail = [line for line in out.splitlines() if line.startswith("FAIL") and "[canary]" in line]
    assert fail and str(art) in fail[0] and "EXCEEDS the claimed" in fail[0], out


def test_llamdex_audit_canary_refuses_records_under_another_schema(tmp_path, capsys):
    from simulations.cli.main import main

    keys, art = tmp_path / "keys", tmp_path / "titanic-eps1"
    main(["keygen", "--name", "alice", "--out", str(keys)])
    main(["client", "train", *_train_flag("titanic"), "--epsilon", "1", "--epochs", "2", "--out", str(art), "--key", str(keys / "alice.key")])
    rc = main(["audit", "--canary", "--artifact", str(art), "--client-key", str(keys / "alice.pub"), "--data", "credit", "--canaries", "50"])
    out = capsys.readouterr().out
    assert rc == 1 and "schema 'credit'" in out and "give the records it was trained on" in out
    assert main(["audit", "--canary", "--artifact", str(art), "--client-key", str(keys / "alice.pub")]) == 2
    assert "give --data" in capsys.readouterr().err


def test_seeded_dp_noise_replays_and_unseeded_noise_does_not(titanic_300):
    """The tests above are deterministic only because the seed reaches Opacus' noise and sampling."""
    from client_party.expert_training import train_expert

    schema, x, y = titanic_300
    cfg = train_config(1.0, seed=0, epochs=2)
    models = [train_expert(x, y, schema, cfg, dp_seed=s).model.state_dict() for s in (5, 5, None)]
    assert all(torch.equal(models[0][k], models[1][k]) for k in models[0])
    assert not torch.equal(models[0]["head.weight"], models[2]["head.weight"])   # fresh noise from the OS


def test_an_expert_with_seeded_dp_noise_cannot_be_saved_or_uploaded(titanic_300, tmp_path):
    """A public noise seed voids the DP statement, so the only path out of the process (save_expert, under
    write_artifact and `client train`) refuses it; the same recipe with OS noise is written."""
    from client_party.expert_training import train_expert
    from protocol.artifact import write_artifact
    from protocol.errors import ReleaseError
    from protocol.expert_spec import save_expert

    schema, x, y = titanic_300
    cfg = train_config(1.0, seed=0, epochs=1)
    seeded = train_expert(x, y, schema, cfg, dp_seed=5)
    with pytest.raises(ReleaseError, match="dp_seed=5") as err:
        write_artifact(tmp_path / "seeded", seeded.model, schema, seeded.dp)
    assert err.value.code == "SEEDED_DP_NOISE"
    assert not (tmp_path / "seeded").exists()
    with pytest.raises(ReleaseError):
        save_expert(seeded.model, tmp_path / "direct")
    assert not (tmp_path / "direct").exists()
    fresh = train_expert(x, y, schema, cfg)
    write_artifact(tmp_path / "fresh", fresh.model, schema, fresh.dp)
    assert (tmp_path / "fresh" / "expert.safetensors").is_file()
