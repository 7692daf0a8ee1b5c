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
    "titanic": "sha256:d0dd4dd28c1cad8ae4cb5c73bc3d7575acb86360285874116b6f1102b98628be",
    "default": "sha256:6db7ecffc8b6d282f8e8d9ebd30cc8534f342fb38c5dffbe36a071db230ae1d7",
    "credit": "sha256:03d17b39287f5e2c55ce1dc1d896e8fc2f51012151a630293a37767d88f0e258",
    "churn": "sha256:7f05727cb2f600feb5d5edcc0486f7caf56a8b890e7959822d27edcec35ce394",
    "penguins": "sha256:0586068b35d3bb655b80692d4d3f1ed897b475d3c773f770896eeb038bffc4d2",
    "telco": "sha256:20359b5f685736c1479a8415c34662db4eb9692bfcc879a9510b6f197b8690a7",
    "attrition": "sha256:f784cc6bf70fd1a0b5a2447ddc2626a353d98040e06e9e19464183e113116564",
}
SENSITIVE = {"titanic": "sex", "default": "student", "credit": "Marital", "churn": "international_plan", "penguins": "sex", "telco": "female",
             "attrition": "Gender"}


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
        load_schema("titanik")   # a bare word is a name: the registered ones are listed
    with pytest.raises(FileNotFoundError) as missing:   # written as a path: the file is missing (exit 4 in the CLI)
        load_schema(tmp_path / "missing.json")
    assert missing.value.filename == str(tmp_path / "missing.json")
    with pytest.raises(IsADirectoryError):
        load_schema(tmp_path)


def test_a_v1_schema_keeps_its_pre_rfc8785_digest_and_v2_uses_rfc8785():
    """Artifacts signed before the switch name their schema by the old digest; it must not change."""
    from protocol.canonical import LEGACY, RFC8785, digest_json

    d = minimal()
    d["columns"][0].update(min=1.0, max=100.0)              # floats: "1.0" before RFC 8785, "1" under it
    v1 = PublicSchema.from_dict(d)
    assert v1.digest == digest_json(v1.to_dict(), LEGACY) != digest_json(v1.to_dict(), RFC8785)
    v2 = PublicSchema.from_dict({**d, "format": "llamdex.schema/v2"})
    assert v2.digest == digest_json(v2.to_dict(), RFC8785)
    assert PublicSchema.from_json(v2.to_json()).digest == v2.digest


def test_an_unknown_schema_format_is_refused_naming_the_formats_read():
    with pytest.raises(SchemaError, match="llamdex.schema/v2"):
        PublicSchema.from_dict({**minimal(), "format": "llamdex.schema/v9"})


def test_v3_level_phrases_round_trip_and_are_checked_against_the_levels():
    d = {**minimal(), "format": "llamdex.schema/v3"}
    d["columns"][1]["level_phrases"] = {"red": ["dressed in red"]}
    d["columns"][2]["level_phrases"] = {"yes": ["holds a card"], "no": ["never joined"]}
    s = PublicSchema.from_dict(d)
    assert s.column("member").phrases_for("yes") == ("holds a card",) and s.column("colour").phrases_for("blue") == ()
    assert PublicSchema.from_json(s.to_json()) == s and PublicSchema.from_json(s.to_json()).digest == s.digest
    without = PublicSchema.from_dict({**minimal(), "format": "llamdex.schema/v3"})
    assert without.digest != s.digest   # the phrases are part of what the digest covers


@pytest.mark.parametrize("change, message", [
    (lambda d: d["columns"][1].update(level_phrases={"green": ["in green"]}), "not levels of the column"),
    (lambda d: d["columns"][2].update(level_phrases={"yes": []}), "non-empty strings"),
    (lambda d: d["columns"][0].update(level_phrases={"1": ["one"]}), "only categorical and bool"),
    (lambda d: d["columns"][1].update(level_phrases=["red"]), "object from level"),
    (lambda d: d.update(format="llamdex.schema/v2") or d["columns"][1].update(level_phrases={"red": ["in red"]}), "needs \"format\""),
])
def test_bad_level_phrases_are_refused_by_name(change, message):
    d = {**minimal(), "format": "llamdex.schema/v3"}
    d["columns"] = [dict(c) for c in d["columns"]]
    change(d)
    with pytest.raises(SchemaError, match=message):
        PublicSchema.from_dict(d)
