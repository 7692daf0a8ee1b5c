"""The numbers a question states, and the token each one ends on (the encoder's numeric pointer reads them)."""

from __future__ import annotations

import math

import pytest
import torch

from provider_party.model.numbers import find_numbers, number_values


@pytest.mark.parametrize("text, values", [
    ("total day minutes: 187.35 minutes", [187.35]),
    ("income $1,234.50 and age 30.", [1234.5, 30.0]),
    ("price of 12,000 dollars; seniority = 3", [12000.0, 3.0]),
    ("no numbers here", []),
    ("SmolLM2 is a name, 4 is a number", [4.0]),  # digits glued to a word are not a stated number
    ("a change of -3 units", [-3.0]),
    ("12,5 is not a thousands group", [12.0]),  # the glued tail is not read as a second number
])
def test_find_numbers(text, values):
    assert [v for _, _, v in find_numbers(text)] == values


def test_values_sit_on_the_last_token_of_each_number():
    text = "age: 29.5, fare 1,000"
    # character offsets of a digit-by-digit tokenizer, like SmolLM2's
    pieces = ["age", ":", " ", "2", "9", ".", "5", ",", " fare", " ", "1", ",", "0", "0", "0"]
    offsets, pos = [], 0
    for p in pieces:
        offsets.append((pos, pos + len(p)))
        pos += len(p)
    assert "".join(pieces) == text
    vals = number_values(offsets, text, 0, len(text))
    got = {pieces[i] + f"@{i}": v for i, v in enumerate(vals) if not math.isnan(v)}
    assert got == {"5@6": 29.5, "0@14": 1000.0}


def test_numbers_outside_the_question_span_are_ignored():
    text = "system 42\nquestion 7\nAnswer 9"
    offsets = [(i, i + 1) for i in range(len(text))]
    start = text.index("question")
    vals = number_values(offsets, text, start, text.index("\nAnswer"))
    assert [v for v in vals if not math.isnan(v)] == [7.0]


def test_batch_numbers_are_aligned_with_left_padded_tokens(base_llm, titanic_schema):
    from provider_party.model.prompting import PromptBuilder

    pb = PromptBuilder(base_llm.tokenizer, titanic_schema)
    qs = ["A passenger aged 29.5 in class 3rd. Did the passenger survive?",
          "Consider a passenger with the following details. The sex is female; the age is 4. Did the passenger survive?"]
    batch = pb.batch(qs, 4)
    assert batch.numbers.shape == batch.input_ids.shape
    for row, expected in zip(range(2), ([29.5], [4.0])):  # "3rd" is a category level, not a stated number
        at = torch.isfinite(batch.numbers[row]).nonzero().flatten().tolist()
        assert [float(batch.numbers[row, i]) for i in at] == expected
        assert batch.question_mask[row, at].all()  # only positions the encoder may read
        last = [base_llm.tokenizer.decode([int(batch.input_ids[row, i])]) for i in at]
        assert last == [("%g" % e)[-1] for e in expected]


def test_encoder_reads_a_stated_number_exactly(tiny_model, titanic_schema):
    """In eval mode a numeric column's value is one of the question's numbers, scaled by the public range."""
    q = "A passenger aged 29.5 travelling in class 3rd, sex male. Did the passenger survive?"
    outs = tiny_model.extract([q])
    fe = tiny_model.encoder.fe
    for b, o in zip(fe.blocks, outs):
        if b.kind == "numeric":
            raw = b.column.min + float(o[0, 0]) * (b.column.max - b.column.min)
            assert min(abs(raw - 29.5), abs(raw - 3.0)) < 1e-3


def test_question_without_any_number_reads_as_missing_or_mid_range(tiny_model):
    """No stated number anywhere in the batch: the pointer has nothing to score and must not fail."""
    q = "A female passenger travelling in class 1st; her age is unknown. Did the passenger survive?"
    outs = tiny_model.extract([q])
    ans = tiny_model.answer([q], tiny_model_expert(tiny_model))
    assert torch.isfinite(ans.probs).all()
    fe = tiny_model.encoder.fe
    for b, o in zip(fe.blocks, outs):
        if b.kind == "numeric":
            assert float(o[0, 0]) == 0.5  # no number to point at: the middle of the public range


def tiny_model_expert(model):
    from protocol.encoding import FeatureEncoder
    from protocol.expert_spec import ExpertSpec, build_expert

    torch.manual_seed(0)
    spec = ExpertSpec(input_dim=FeatureEncoder(model.schema).dim, num_classes=2, schema_digest=model.schema.digest)
    return build_expert(spec).eval()
