"""Schema-only synthetic tasks for choosing DP hyper-parameters: shaped like the schema, with the asked prior."""

from __future__ import annotations

import numpy as np
import pytest

from client_party.datasets import load_schema
from client_party.synthetic_tasks import synthetic_task
from protocol.encoding import FeatureEncoder


@pytest.mark.parametrize("name", ["titanic", "default", "credit", "churn"])
def test_a_task_is_encoded_like_the_schema_with_the_asked_prior(name):
    schema = load_schema(name)
    t = synthetic_task(schema, 4000, minority_prior=0.1, seed=1)
    fe = FeatureEncoder(schema)
    assert t.x.shape == (4000, fe.dim) and t.y.shape == (4000,) and t.x.dtype == np.float32
    assert ((t.x >= 0) & (t.x <= 1)).all()
    for b in fe.blocks:
        block = t.x[:, b.start:b.stop]
        if b.kind == "categorical":
            assert (block.sum(1) == 1).all()                         # one level or the missing flag
        assert b.column.nullable or not block[:, -1].any()           # missing only where the schema allows it
    counts = np.bincount(t.y, minlength=schema.label.num_classes) / len(t.y)
    assert abs(counts.min() - 0.1) < 0.03


def test_the_same_seed_gives_the_same_task_and_bad_priors_are_refused():
    schema = load_schema("credit")
    a, b = synthetic_task(schema, 500, seed=3), synthetic_task(schema, 500, seed=3)
    assert np.array_equal(a.x, b.x) and np.array_equal(a.y, b.y)
    with pytest.raises(ValueError, match="minority_prior"):
        synthetic_task(schema, 500, minority_prior=0.7)


def test_the_client_never_imports_the_providers_synthesizer():
    import ast
    from pathlib import Path

    src = Path(__file__).resolve().parents[1] / "client_party" / "synthetic_tasks.py"
    imported = {n.module for n in ast.walk(ast.parse(src.read_text())) if isinstance(n, ast.ImportFrom)}
    assert not any(m and m.startswith("provider_party") for m in imported)
