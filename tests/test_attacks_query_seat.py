"""The query-only seat: the same attacks through the customized LLM's answers (tiny connectors, few records)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from client_party.datasets import load_table
from protocol.verbalizer import Verbalizer
from simulations.attacks.mia import LLMChannel, MIAConfig, run_mia


def test_query_channel_equals_the_one_pass_answer(tiny_model):
    df, _ = load_table("titanic")
    records = df.iloc[:6]
    channel = LLMChannel(tiny_model, records, seed=0, batch_size=4)
    torch.manual_seed(0)
    from protocol.expert_spec import ExpertSpec, build_expert
    from protocol.encoding import FeatureEncoder

    schema = tiny_model.schema
    expert = build_expert(ExpertSpec(input_dim=FeatureEncoder(schema).dim, num_classes=2, schema_digest=schema.digest)).eval()
    questions = Verbalizer(schema, seed=20_000).questions(records[schema.feature_names].to_dict("records"))
    direct = tiny_model.answer(questions, expert).probs.double().log().numpy()
    assert np.allclose(channel.log_probs(expert), direct, atol=1e-4)


@pytest.mark.slow
def test_membership_attacks_from_the_query_seat(tiny_model):
    cfg = MIAConfig(target_size=300, eval_members=300, eval_nonmembers=300, n_shadows=2, epochs=20, seed=0,
                    query_members=16, query_nonmembers=16, query_shadows=2)
    report = run_mia("titanic", cfg, llamdex=tiny_model)
    seats = {(r.attack, r.seat) for r in report.results}
    for attack in ("loss", "confidence", "entropy", "modified_entropy", "margin", "lira_online", "lira_offline"):
        assert (attack, "provider") in seats and (attack, "query") in seats
    q = [r for r in report.results if r.seat == "query"]
    assert all(r.n_members == 16 and r.n_nonmembers == 16 and 0.0 <= r.auc <= 1.0 for r in q)
    assert 0.0 <= report.llamdex_accuracy <= 1.0 and 0.0 <= report.expert_accuracy_query_subset <= 1.0
