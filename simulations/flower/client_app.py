"""The client party as a Flower `ClientApp`: thin handlers over `SimulatedClient`.

    query.register        make its key, pin the provider's key, report its public key and table
    train.expert          train its expert (DP-SGD at its own ε, or no DP), sign it, hand over the signed upload stream
    query.receipt         verify an upload receipt and keep it
    train                 one DP-FedAvg round from the global expert (client-level DP is added by the server)
    query.sign_federated  the federation's lead signs the final federated expert and hands it over once
    query.questions       its held-out records as questions
    query.score           score the answers to them here (labels never leave)

`faults` in the run config make a client misbehave on purpose (tests and demos): `crash` raises in
`train.expert`, `timeout` hangs in `train.expert` past the run's timeout, `tamper` changes a signed
weight, `over-budget` asks for twice its budget.
"""

from __future__ import annotations

import functools
import json
import time
from collections.abc import Callable

from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from simulations.flower.scenario import Scenario

app = ClientApp()


def _client(context: Context) -> object:
    from simulations.flower.simulated_client import SimulatedClient

    scenario = Scenario.from_run_config(dict(context.run_config))
    nc = context.node_config
    return SimulatedClient(scenario, int(nc["partition-id"]), scenario.out_path(context.run_id), nc.get("workspace") or None)


def _keeps_values_private(handler: Callable[[Message, Context], Message]) -> Callable[[Message, Context], Message]:
    """A client's table that violates its schema fails the handler with counts, kinds and columns only: Flower sends a
    ClientApp's exception text to the ServerApp (the provider's side), and the validation message names cell values."""
    @functools.wraps(handler)
    def run(msg: Message, context: Context) -> Message:
        from protocol.errors import DataValidationError
        from protocol.rpc_errors import redacted_data_error

        try:
            return handler(msg, context)
        except DataValidationError as e:
            raise redacted_data_error(e) from None
    return run


def _reply(msg: Message, **records: object) -> Message:
    return Message(RecordDict(records), reply_to=msg)


@app.query("register")
@_keeps_values_private
def register(msg: Message, context: Context) -> Message:
    client = _client(context)
    info = client.register(msg.content["provider"]["public-key"])
    return _reply(msg, client=ConfigRecord(info))


@app.train("expert")
@_keeps_values_private
def train_expert(msg: Message, context: Context) -> Message:
    client = _client(context)
    fault = client.scenario.fault_for(client.index)
    if fault == "crash":
        raise RuntimeError(f"{client.client_id}: injected crash while training (fault 'crash')")
    if fault == "timeout":
        time.sleep(client.scenario.timeout_s * 2 + 30)   # no answer within the run's timeout
    up = client.train_and_sign(int(msg.content["config"]["chunk-bytes"]))
    info = {"artifact-digest": up.artifact_digest, "dataset-id": up.dataset_id, "epsilon": -1.0 if up.epsilon is None else up.epsilon,
            "delta": up.delta, "n-train": up.n_train, "n-heldout": up.n_heldout, "expert-accuracy": up.expert_accuracy, "seconds": up.seconds}
    return _reply(msg, upload=ConfigRecord({"messages": up.messages}), trained=ConfigRecord(info))


@app.query("receipt")
@_keeps_values_private
def receipt(msg: Message, context: Context) -> Message:
    r = msg.content["receipt"]
    return _reply(msg, receipt=ConfigRecord(_client(context).accept_receipt(str(r["envelope"]), str(r["artifact-digest"]))))


@app.train()
@_keeps_values_private
def fedavg(msg: Message, context: Context) -> Message:
    cfg = msg.content["config"]
    arrays = msg.content["arrays"].to_numpy_ndarrays()
    names = list(msg.content["arrays"].keys())
    out, n, loss = _client(context).fedavg_round(dict(zip(names, arrays, strict=True)), int(cfg["local-epochs"]), float(cfg["lr"]),
                                                 int(cfg["seed"]) + int(cfg["server-round"]))
    # every client weighs the same: DP-FedAvg's noise is calibrated to an unweighted average of clipped updates
    return _reply(msg, arrays=ArrayRecord({k: Array(v) for k, v in out.items()}), metrics=MetricRecord({"weight": 1.0, "train-loss": loss,
                                                                                                "rows": n}))


@app.query("sign_federated")
@_keeps_values_private
def sign_federated(msg: Message, context: Context) -> Message:
    rec = msg.content["arrays"]
    arrays = dict(zip(rec.keys(), rec.to_numpy_ndarrays(), strict=True))
    messages, digest, dataset_id = _client(context).sign_federated(arrays, str(msg.content["dp"]["statement"]),
                                                                   int(msg.content["dp"]["chunk-bytes"]))
    return _reply(msg, upload=ConfigRecord({"messages": messages}), signed=ConfigRecord({"artifact-digest": digest, "dataset-id": dataset_id}))


@app.query("questions")
@_keeps_values_private
def questions(msg: Message, context: Context) -> Message:
    return _reply(msg, questions=ConfigRecord({"questions": _client(context).questions()}))


@app.query("score")
@_keeps_values_private
def score(msg: Message, context: Context) -> Message:
    a = msg.content["answers"]
    fed = msg.content["federated"] if "federated" in msg.content else None
    fed_arrays = dict(zip(fed.keys(), fed.to_numpy_ndarrays(), strict=True)) if fed is not None else None
    fed_llamdex = [int(v) for v in a["federated-llamdex"]] if "federated-llamdex" in a else None
    scores = _client(context).score([int(v) for v in a["llamdex"]], [int(v) for v in a["base"]], fed_arrays, fed_llamdex)
    return _reply(msg, scores=ConfigRecord({"json": json.dumps(scores, sort_keys=True)}))


__all__ = ["app"]
