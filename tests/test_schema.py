"""The public schema: the four bundled schemas load with stable digests; malformed ones are refused precisely."""

from __future__ import annotations

import copy
import json

import pytest

from client_party.datasets import DATASETS, load_schema
from protocol.errors import SchemaError
from protocol.schema import PublicSchema

# Connectors are keyed by schema digest: changing a bundled schema orphans every connector trained
# for it. Update these only on purpose (and bump the schema's "version").
GOLDEN_DIGESTS = {
    "titanic": "sha256:fa91c7dec57e2a13a9afa2eebd251c3ab90b9c2ea4c4813cdd3d1e8189ca3c04",
    "default": "sha256:ba7b5db00cd8c778a123898cbb09ae32c179b3b333d5bb6150f6a1d6c6622a96",
    "credit": "sha256:88aa0544c3213c1dc599a7802fa9387951df12a6a935595be2fc602d01846a1b",
    "churn": "sha256:3368af74e9fc85b97b7da3750b83dbf1475aceb8f29c0561779c60f6be5a5cff",
    "telco": "sha256:ad52339ca440b6e7b6e20bc74423031e78284e694366ac39d4eada449bb582bc",
    "attrition": "sha256:eb871af2eaa630950e752f66d6f34be2f83475b3d470cdd4fa8aab5e2eed43de",
}
SENSITIVE = {"titanic": "sex", "default": "student", "credit": "Marital", "churn": "international_plan", "telco": "female", "attrition": "Gender"}


def minimal() -> dict:
    return {
        "format": "llamdex.schema/v1",
        "name": "toy",
        "version": "1",
        "description": "A toy table.",
        "subject": "person",
        "columns": [
            {"name": "age", "type": "int", "description": "Age in years.", "min": 0, "max": 100, "unit": "years"},
            {"name": "colour", "type": "category", "description": "Favourite colour.", "categories": ["red", "blue"]},
            {"name": "member", "type": "bool", "description": "Is a member."},
        ],
        "label": {"name": "y", "classes": ["a", "b"], "verbalizers": ["A", "B"], "question": "Which group?"},
    }


def test_a_valid_schema_loads_and_round_trips():
    s = PublicSchema.from_dict(minimal())
    assert s.feature_names == ["age", "colour", "member"]
    assert s.column("member").levels == ("no", "yes")
    again = PublicSchema.from_json(s.to_json())
    assert again == s and again.digest == s.digest
    assert s.digest.startswith("sha256:") and len(s.digest) == 7 + 64


@pytest.mark.parametrize("name", sorted(DATASETS))
def test_bundled_schema_loads_with_a_stable_digest(name):
    s = load_schema(name)
    assert s.digest == GOLDEN_DIGESTS[name], f"schema {name!r} changed; if on purpose, bump its version and update GOLDEN_DIGESTS"
    assert load_schema(DATASETS[name].schema_path).digest == s.digest  # by path too
    assert PublicSchema.from_dict(s.to_dict()).digest == s.digest


@pytest.mark.parametrize("name", sorted(DATASETS))
def test_bundled_schema_is_complete_for_the_verbalizer(name):
    s = load_schema(name)
    assert s.sensitive_columns == [SENSITIVE[name]]
    assert s.label.question.endswith("?")
    assert s.subject
    for c in s.columns:
        assert 2 <= len(c.aliases) <= 4, c.name
        if c.type == "float":
            assert c.decimals is not None, c.name
        if c.is_numeric:
            assert c.min < c.max


def mutated(path: list, value=None, *, delete: bool = False) -> dict:
    d = copy.deepcopy(minimal())
    target = d
    for key in path[:-1]:
        target = target[key]
    if delete:
        del target[path[-1]]
    else:
        target[path[-1]] = value
    return d


@pytest.mark.parametrize(
    "data, needles",
    [
        (mutated(["columns", 0, "type"], "integer"), ["'age'", "type", "integer"]),
        (mutated(["columns", 0, "min"], 100), ["'age'", "'min'", "below"]),
        (mutated(["columns", 0, "max"], -5), ["'age'", "'min'", "below"]),
        (mutated(["columns", 0, "min"], delete=True), ["'age'", "'min'"]),
        (mutated(["columns", 1, "categories"], delete=True), ["'colour'", "categories"]),
        (mutated(["columns", 1, "categories"], ["red"]), ["'colour'", "at least 2"]),
        (mutated(["columns", 1, "categories"], ["red", "red"]), ["'colour'", "duplicate"]),
        (mutated(["columns", 2, "name"], "age"), ["duplicate column", "age"]),
        (mutated(["label", "verbalizers"], ["A"]), ["label 'y'", "1 verbalizers for 2 classes"]),
        (mutated(["label", "name"], "colour"), ["label 'colour'", "also listed as a feature column"]),
        (mutated(["columns", 0, "range"], [0, 100]), ["'age'", "unknown keys", "range"]),
        (mutated(["colour_map"], {}), ["unknown keys", "colour_map"]),
        (mutated(["label", "question"], "Which group"), ["label 'y'", "'?'"]),
        (mutated(["columns", 0, "description"], ""), ["'age'", "description"]),
        (mutated(["format"], "llamdex.schema/v0"), ["format"]),
    ],
    ids=[
        "unknown-type", "min-equals-max", "min-above-max", "no-min", "missing-categories", "one-category",
        "duplicate-categories", "duplicate-columns", "verbalizer-count", "label-in-columns",
        "unknown-column-key", "unknown-top-key", "question-mark", "empty-description", "format",
    ],
)
def test_malformed_schema_names_the_column_and_the_problem(data, needles):
    with pytest.raises(SchemaError) as e:
        PublicSchema.from_dict(data)
    for needle in needles:
        assert needle in str(e.value)


def test_schema_file_errors_name_the_file(tmp_path):
    p = tmp_path / "bad.json"
    p.write_text("{not json")
    with pytest.raises(SchemaError, match="bad.json"):
        PublicSchema.load(p)
    p.write_text(json.dumps(mutated(["columns", 0, "type"], "text")))
    with pytest.raises(SchemaError, match="bad.json.*'age'"):
        PublicSchema.load(p)
    with pytest.raises(SchemaError, match="neither a registered dataset"):
        load_schema(tmp_path / "missing.json")
