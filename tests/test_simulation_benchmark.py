"""The simulation benchmark's report says which command measured which series: a rerun of one series (`--only`)
merges into simulation.json beside the others, and must not put its command over rows it did not measure."""

from __future__ import annotations

from simulations.benchmarks.simulation import _stamped, markdown

ACC = {"base_llm": 0.6, "expert": 0.7, "llamdex": 0.7, "llamdex_expert_agreement": 1.0}


def _run(series: str, **extra) -> dict:
    return {"series": series, "engine": "simulation", "clients": 2, "schemas": 1, "tables": ["titanic"], "connectors": "reused",
            "preset": "quick", "total_s": 60.0, "connector_training_s": 0.0, "per_extra_client_s": None, "finished": 2, "excluded": [],
            "accuracy_mean": ACC, **extra}


def _federated(**extra) -> dict:
    return {"dataset": "titanic", "epsilon": 1.0, "seed": 0, "clients": 2, "federated_accuracy": 0.6, "individual_accuracy_mean": 0.7,
            "individual_llamdex_accuracy_mean": 0.7, "individual_llamdex_expert_agreement_mean": 1.0, "majority_class_accuracy_mean": 0.6,
            "rounds": 5, "noise_multiplier": 1.0, "epsilon_flower": 1.0, "epsilon_provider": 1.0, **extra}


def test_a_file_from_one_run_names_its_command_once():
    payload = {"command": "python -m simulations.benchmarks.simulation", "environment": {"date": "D1", "cpu_count": 2},
               "runs": [_run("scaling"), _run("schemas")], "federated": [_federated()]}
    text = markdown(payload)
    assert "`python -m simulations.benchmarks.simulation` (D1)" in text and text.count("`python -m") == 1


def test_a_rerun_of_one_series_keeps_the_others_command_and_date():
    stored = _stamped({"command": "python -m simulations.benchmarks.simulation", "environment": {"date": "D1", "cpu_count": 2},
                       "runs": [_run("scaling")], "federated": [_federated()]})
    assert stored["runs"][0]["command"] == "python -m simulations.benchmarks.simulation" and stored["runs"][0]["date"] == "D1"
    rerun = "python -m simulations.benchmarks.simulation --only federated"
    payload = {**stored, "command": rerun, "environment": {"date": "D2", "cpu_count": 2},
               "federated": [_federated(command=rerun, date="D2")]}
    text = markdown(payload)
    assert "scaling: `python -m simulations.benchmarks.simulation` (D1)" in text
    assert f"federated: `{rerun}` (D2)" in text
