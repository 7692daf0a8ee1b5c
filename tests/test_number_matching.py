"""Stated numbers are assigned to numeric columns jointly: a number stated once is one column's value at most."""

from __future__ import annotations

import numpy as np
import torch

from protocol.schema import PublicSchema
from protocol.seeding import generator, init_parameters
from provider_party.model.connectors import ConnectorConfig, build_connectors
from provider_party.model.number_matching import match_numbers

def _scores(rows: list[list[float]]) -> torch.Tensor:
    """One question: per column, scores over 4 positions and then "nothing stated"."""
    return torch.tensor([rows], dtype=torch.float32)


def _numbers(*positions: int, length: int = 4) -> torch.Tensor:
    mask = torch.zeros(1, length, dtype=torch.bool)
    mask[0, list(positions)] = True
    return mask


def test_two_columns_wanting_one_number_get_the_best_joint_assignment():
    # both columns rank position 1 first; column 0 wants it more, column 1's second choice (3) still beats "nothing"
    scores = _scores([[0, 5, 0, 1, 0],
                      [0, 4, 0, 3, 0]])
    position, missing = match_numbers(scores, _numbers(1, 3))
    assert position.tolist() == [[1, 3]]
    assert (missing < 0).all()


def test_the_total_is_maximised_not_each_column_greedily():
    # greedy (column 0 first) would give 0 -> 1 and 1 -> 3 (5 + 1 = 6); the best total is 0 -> 3, 1 -> 1 (4 + 5 = 9)
    scores = _scores([[0, 5, 0, 4, -9],
                      [0, 5, 0, 1, -9]])
    position, _ = match_numbers(scores, _numbers(1, 3))
    assert position.tolist() == [[3, 1]]


def test_a_column_whose_number_is_taken_reads_nothing_stated_unless_another_number_beats_that():
    scores = _scores([[0, 5, 0, -3, 0],
                      [0, 4, 0, -2, 0]])
    position, missing = match_numbers(scores, _numbers(1, 3))
    assert position[0, 0] == 1
    assert missing[0, 0] < 0 < missing[0, 1]     # column 1's only other number (-2) is below its "nothing" (0)


def test_without_conflicts_it_is_the_column_by_column_reading():
    g = torch.Generator().manual_seed(0)
    for _ in range(50):
        scores = torch.randn(1, 3, 7, generator=g) * 3
        numbers = torch.rand(1, 6, generator=g) < 0.6
        stated = scores[..., :-1].masked_fill(~numbers[:, None, :], -1e4)
        best = stated.argmax(-1)
        independent_missing = scores[..., -1] - stated.max(-1).values > 0
        claimed = best[~independent_missing].tolist()
        if len(claimed) != len(set(claimed)):
            continue                                 # a conflict: covered by the tests above
        position, missing = match_numbers(scores, numbers)
        assert ((missing > 0) == independent_missing).all()
        assert (position[~independent_missing] == best[~independent_missing]).all()


def test_a_number_may_go_to_no_column_and_a_question_without_numbers_reads_all_missing():
    scores = _scores([[0, -1, 0, 0, 2],
                      [0, 0, 0, -1, 2]])
    _, missing = match_numbers(scores, _numbers(1, 3))
    assert (missing > 0).all()                       # neither number beats "nothing stated": no column is forced to take one
    _, missing = match_numbers(scores, _numbers())
    assert (missing > 0).all()


def test_no_two_numeric_columns_of_the_encoder_read_the_same_number():
    """Two numeric columns whose pointers are identical (the worst case of two fields sharing a unit):
    read independently they take the same number; matched, they never do."""
    cols = [{"name": n, "type": "int", "description": f"{n}.", "min": 0, "max": 100, "aliases": [n]} for n in ("day", "evening")]
    schema = PublicSchema.from_dict({"name": "calls", "version": "1", "description": "Minutes.", "subject": "customer", "columns": cols,
                                     "label": {"name": "left", "classes": ["no", "yes"], "verbalizers": ["No", "Yes"], "question": "Left?"}})
    config = ConnectorConfig(base_model_id="test", schema_digest=schema.digest, hidden_size=32, num_layers=4, encoder_layer=1,
                             inject_layer=2, encoder_dim=16)
    encoder, _ = build_connectors(config, schema)
    init_parameters(encoder, generator(0))
    with torch.no_grad():
        encoder.queries[1] = encoder.queries[0]
        encoder.nothing.fill_(-1e3)                  # a number always beats "nothing stated"
    h = torch.randn(8, 6, 32, generator=torch.Generator().manual_seed(1))
    mask = torch.ones(8, 6, dtype=torch.bool)
    numbers = torch.full((8, 6), float("nan"))
    numbers[:, 1], numbers[:, 4] = 20.0, 70.0        # two distinct numbers stated in every question
    encoder.number_decoding = "independent"
    independent = encoder(h, mask, numbers)
    assert torch.equal(independent[0][:, 0], independent[1][:, 0])
    encoder.number_decoding = "matching"
    matched = encoder(h, mask, numbers)
    day, evening = matched[0][:, 0], matched[1][:, 0]
    assert (day != evening).all()
    assert set(np.round(torch.cat([day, evening]).numpy() * 100).tolist()) == {20.0, 70.0}
    assert (matched[0][:, 1] < 0).all() and (matched[1][:, 1] < 0).all()


def test_claim_all_gives_every_number_a_column_before_nothing_stated():
    scores = _scores([[0, -1, 0, 0, 2],
                      [0, 0, 0, -3, 2]])
    position, missing = match_numbers(scores, _numbers(1, 3), claim_all=True)
    assert position.tolist() == [[3, 1]]              # both numbers given out (0 + 0 beats -1 + -3), though each scores below "nothing"
    assert (missing < 0).all()
    # more columns than numbers: the spare column keeps "nothing stated"
    position, missing = match_numbers(scores, _numbers(1), claim_all=True)
    assert position[0, 1] == 1 and missing[0, 1] < 0 < missing[0, 0]   # the number goes to the column scoring it higher


def _number_decoding_script():
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "scripts" / "number_decoding.py"
    spec = importlib.util.spec_from_file_location("number_decoding", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_left_out_probe_leaves_one_numeric_column_out_and_adds_an_aside_with_a_number():
    import math
    import re

    from client_party.datasets import TableRef

    script = _number_decoding_script()
    df, schema = TableRef.parse("churn").load()
    rows = df[schema.feature_names].head(12).to_dict("records")
    plain, asked, left_out = script._left_out_questions(schema, rows, seed=0, aside=False)
    with_aside, _, left_out_again = script._left_out_questions(schema, rows, seed=0, aside=True)
    assert left_out_again == left_out                 # the same records and questions, an aside in front
    numeric = {c.name for c in schema.columns if c.is_numeric}
    for row, a, col, q, qa in zip(rows, asked, left_out, plain, with_aside):
        assert col in numeric and math.isnan(a[col])
        assert all(a[k] == row[k] for k in schema.feature_names if k != col)
        aside = qa[: len(qa) - len(q)].strip()
        assert qa.endswith(q) and aside in script.ASIDES and re.search(r"\d", aside)
