"""The Flower app on the deployment engine: `flower-superlink` and one `flower-supernode` per client as separate processes.

On loopback the transport is plain HTTP (allowed there only); across two network namespaces (two "hosts"
joined by a veth pair, `simulations.netns.host_pair`) the SuperLink serves TLS with a certificate for its
address, and the SuperNodes and `flwr run` verify it with the CA (skipped with the reason where namespaces
cannot be made). Either way every process of the run is stopped at the end.
"""

from __future__ import annotations

import pytest


@pytest.fixture(scope="module")
def connector_store(tmp_path_factory, base_llm, titanic_schema, tiny_connectors):
    from provider_party.model.connector_store import ConnectorStore

    root = tmp_path_factory.mktemp("connectors")
    ConnectorStore(root).save(base_llm, titanic_schema, tiny_connectors)
    return root


def _run_config(store):
    return {"data": "titanic", "epochs": 3, "max-test": 4, "connectors": str(store), "timeout-s": 180.0}


def _assert_clean_run(run, clients):
    from simulations.flower.launcher import leftover_processes

    report = run.report()
    assert report["status"] == "completed", report.get("error")
    assert report["engine"] == "deployment" and report["ledger_verified"] and report["receipts_verified"] == clients
    assert [c["excluded"] for c in report["clients"]] == [None] * clients
    assert all({"base_llm", "expert", "llamdex"} <= set(c["scores"]) for c in report["clients"])
    started = " ".join(run.stopped)
    assert started.count("flower-supernode") == clients and "flower-superlink" in started
    assert run.leftovers == [] and leftover_processes(run.token) == []
    return report


@pytest.mark.slow   # ~1 min of process start-ups; the app, its SuperLink process and its clean-up run by default in tests/test_flower_simulation.py
def test_a_superlink_and_two_supernodes_on_loopback_run_the_app(tmp_path, connector_store):
    from simulations.flower.deployment import run_deployment

    run = run_deployment(_run_config(connector_store), clients=2, out_dir=tmp_path, timeout_s=900)
    _assert_clean_run(run, 2)
    assert not (tmp_path / "certs").exists()   # loopback: no TLS material was needed


def test_insecure_transport_off_loopback_is_refused(tmp_path):
    from simulations.flower.deployment import run_deployment

    with pytest.raises(ValueError, match="loopback only"):
        run_deployment({}, clients=1, out_dir=tmp_path, host="10.1.2.3", tls=False)


@pytest.mark.slow
def test_superlink_and_supernodes_on_two_hosts_over_tls(tmp_path, connector_store):
    from simulations.flower.deployment import run_deployment
    from simulations.netns import NetnsUnavailable, host_pair

    try:
        with host_pair(tag="llxfl", subnet=78) as pair:
            run = run_deployment(_run_config(connector_store), clients=2, out_dir=tmp_path, host=pair.provider_ip, port=39500,
                                 superlink_prefix=["ip", "netns", "exec", pair.provider_ns], supernode_prefix=["ip", "netns", "exec", pair.client_ns],
                                 timeout_s=900)
    except NetnsUnavailable as e:
        pytest.skip(str(e))
    _assert_clean_run(run, 2)
    assert (tmp_path / "certs" / "superlink.pem").is_file()   # a certificate for 10.78.0.1 from the run's CA
    assert "https://10.78.0.1:39500" in (tmp_path / "logs" / "superlink.log").read_text(errors="replace")   # served over TLS only
