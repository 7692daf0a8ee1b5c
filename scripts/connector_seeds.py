"""How much do Llamdex's figures move when only the connectors' training seed changes?

    python scripts/connector_seeds.py --data credit,telco --seeds 1,2 --out docs/results/connector_seeds.json

A comparison between two connector recipes (or two verbalizers) rests on one connector training per
side, so it needs the spread of one recipe over its own training runs. For each table and seed this
trains the default preset's connectors with that seed into a store of its own (`--store`), then runs
`bench accuracy`'s pipeline with everything else fixed at seed 0: the same held-out records (the
`--max-test` subsample), the same expert (no DP), the same questions in both phrasings. Seed 0 is read
from the main store when it is there (`--seed0-store`, default: the store `bench accuracy` fills), so a
run over seeds 1 and 2 adds two trainings per table. Per run it records the extraction on real
held-out questions (the weakest column), Llamdex's agreement with the expert on the verbalizer's
phrasing and on the evaluation-only phrasings (general templates and hand-written), Llamdex −
expert, and per mechanism the columns read below 0.97 on the evaluation-only phrasings. Writes one JSON
object and prints two Markdown tables. `--seeds ''` measures the main store's connectors alone;
`--questions-factor 2 --seeds 0 --seed0-store none` trains seed 0 again with twice the question budget;
`--filler-rate 0.3` with filler words in place of 30 % of the connectives; `--encoder-layer 20` with the
expert encoder reading the states entering layer 20 instead of the preset's 12.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from simulations.benchmarks.results_md import command_line


def _weakest(extraction: dict[str, dict]) -> tuple[str, float]:
    """The column read worst on real held-out questions (categorical accuracy, numeric exactness, missing flag)."""
    def score(v: dict) -> float:
        return min(v.get("accuracy", v.get("exact", 1.0)), v.get("missing_flag_accuracy", 1.0))
    name = min(extraction, key=lambda c: score(extraction[c]))
    return name, score(extraction[name])


def measure(table: str, seed: int, store: Path, max_test: int, questions_factor: float = 1.0, filler_rate: float = 0.0,
            encoder_layer: int | None = None) -> dict:
    from client_party.datasets import load_schema
    from provider_party.model.base_llm import load_base_llm
    from provider_party.model.connector_store import ConnectorStore
    from simulations.pipeline import run_pipeline

    schema = load_schema(table)
    base = load_base_llm()
    t = time.perf_counter()
    preset = _preset(questions_factor, filler_rate, encoder_layer)
    _, trained = ConnectorStore(store).get_or_train(base, schema, preset, seed=seed)
    train_s = time.perf_counter() - t if trained else None
    res = run_pipeline(table, (None,), seed=0, max_test=max_test, connectors_root=store, retrain=False, base_model=base)
    ph = res.phrasing["no-dp"]
    by = {r["method"]: r for r in res.rows if r["epsilon"] is None}
    col, worst = _weakest(res.extraction)
    return {"table": table, "connector_seed": seed, "questions_factor": questions_factor, "filler_rate": filler_rate,
            "encoder_layer": preset.encoder_layer, "train_s": None if train_s is None else round(train_s, 1),
            "weakest_column": col, "weakest_column_score": worst,
            "verbalizer_agreement": ph["verbalizer_agreement"], "phrasing_agreement": ph["agreement"],
            "general_agreement": ph["by_mechanism"]["general"]["agreement"],
            "hand_agreement": ph.get("by_mechanism", {}).get("hand", {}).get("agreement"),
            "gap_accuracy": by["llamdex"]["accuracy"] - by["expert"]["accuracy"],
            "gap_balanced_accuracy": by["llamdex"]["balanced_accuracy"] - by["expert"]["balanced_accuracy"],
            "self_check_passed": res.connector_metrics.get("self_check", {}).get("passed"),
            "phrasing_misreads": {k: _misreads(m["extraction"]) for k, m in ph["by_mechanism"].items()}}


def _preset(questions_factor: float, filler_rate: float = 0.0, encoder_layer: int | None = None):
    """The default preset, with its encoder question budget scaled (1.0: the default itself), filler words (0: none) and
    the layer the encoder reads (None: the preset's)."""
    from dataclasses import replace

    from provider_party.model.connector_training import PRESETS

    p = PRESETS["default"]
    if questions_factor != 1.0:
        p = replace(p, name=f"{p.name}-x{questions_factor:g}", encoder_questions=round(p.encoder_questions * questions_factor))
    if filler_rate:
        p = replace(p, name=f"{p.name}-filler{filler_rate:g}", filler_rate=filler_rate)
    if encoder_layer is not None and encoder_layer != p.encoder_layer:
        p = replace(p, name=f"{p.name}-j{encoder_layer}", encoder_layer=encoder_layer)
    return p


def _misreads(extraction: dict[str, dict]) -> dict[str, float]:
    """Every reading below the issue's 0.97 on one mechanism's questions: which columns need domain words
    (misread on the hand-written sentences only) and which a better reader (on both)."""
    from simulations.evaluation import readings_below

    return readings_below(extraction)


def _cell(values: list[float | None]) -> str:
    from simulations.benchmarks.accuracy import format_spread

    values = [v for v in values if v is not None]   # hand_agreement is None on a table without hand-written templates
    return format_spread(values) if values else "–"


def main(argv: list[str] | None = None) -> int:
    from provider_party.model.base_llm import llamdex_home

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default="credit,telco", help="registered tables, comma-separated")
    ap.add_argument("--seeds", default="1,2", help="connector training seeds to train now, comma-separated (default 1,2)")
    ap.add_argument("--max-test", type=int, default=500, help="held-out subsample, as bench accuracy's (default 500)")
    ap.add_argument("--store", type=Path, default=Path("runs/connector_seeds"), help="root of the per-seed connector stores")
    ap.add_argument("--seed0-store", type=Path, default=None, help="store holding seed 0's connectors (default: $LLAMDEX_HOME/connectors); "
                    "'none' to leave seed 0 out")
    ap.add_argument("--questions-factor", type=float, default=1.0, help="scale the default preset's encoder question budget for the "
                    "seeds trained now (default 1.0); use a store of its own")
    ap.add_argument("--filler-rate", type=float, default=0.0, help="share of named fields said with filler words instead of a "
                    "connective, for the seeds trained now (default 0: the default preset); use a store of its own")
    ap.add_argument("--encoder-layer", type=int, default=None, help="the layer whose states the expert encoder reads, for the seeds "
                    "trained now (default: the preset's, 12); use a store of its own")
    ap.add_argument("--out", type=Path, required=True, help="JSON file to write")
    args = ap.parse_args(argv)
    seeds = [int(s) for s in args.seeds.split(",") if s]
    seed0 = None if str(args.seed0_store) == "none" else (args.seed0_store or llamdex_home() / "connectors")

    runs = []
    for table in [t for t in args.data.split(",") if t]:
        # the main store's seed 0 was trained with the default preset, whatever --questions-factor, --filler-rate and --encoder-layer say
        plan = ([(0, Path(seed0), 1.0, 0.0, None)] if seed0 is not None else []) + \
            [(s, args.store / f"seed{s}", args.questions_factor, args.filler_rate, args.encoder_layer) for s in seeds]
        for seed, store, factor, filler, layer in plan:
            print(f"== {table}, connector seed {seed} ({store})", flush=True)
            runs.append(measure(table, seed, store, args.max_test, factor, filler, layer))
            args.out.write_text(json.dumps({"command": command_line("python scripts/connector_seeds.py", argv), "runs": runs}, indent=1) + "\n")
    keys = ("weakest_column_score", "verbalizer_agreement", "phrasing_agreement", "general_agreement", "hand_agreement", "gap_accuracy",
            "gap_balanced_accuracy")
    print("| table | seeds | " + " | ".join(keys) + " |")
    print("|---|---|" + "---|" * len(keys))
    for table in dict.fromkeys(r["table"] for r in runs):
        rs = [r for r in runs if r["table"] == table]
        print(f"| {table} | {','.join(str(r['connector_seed']) for r in rs)} | " + " | ".join(_cell([r[k] for r in rs]) for k in keys) + " |")
    print("\n| table | mechanism | readings below 0.97 on the evaluation-only phrasings |")
    print("|---|---|---|")
    for r in runs:
        for k, bad in r["phrasing_misreads"].items():
            print(f"| {r['table']} (seed {r['connector_seed']}) | {k} | " + (", ".join(f"{c} {v:.3f}" for c, v in bad.items()) or "none") + " |")
    return 0


if __name__ == "__main__":
    import sys

    raise SystemExit(main(sys.argv[1:]))
