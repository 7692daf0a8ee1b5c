"""Reader ablation: how the expert encoder's design reads real questions, column by column.

Run: `python -m simulations.benchmarks.reader_ablation` (defaults: churn, attrition and telco; mixer
windows 5, 9 and 13 with two blocks, and three blocks of 5, all reading the preset's layer). Writes
docs/results/reader_ablation.json and the `reader_ablation` section of docs/RESULTS.md (`--name`
another). A variant `9x2@20` reads the states entering layer 20 instead: every layer the variants
name comes from the same frozen pass.

What it isolates: only the encoder changes between variants. Each table's synthetic training
questions (the `default` preset's count for the schema) and its real held-out questions (the
verbalizer's phrasing and the evaluation-only phrasings of `simulations.phrasings`) go through the
frozen LLM once, to the deepest layer a variant reads; every variant then trains an encoder from the
same seed on the same cached states and reads the same questions. No self-check round, decoder or expert is involved, so a
difference is the reader's alone; `bench accuracy` measures the whole model with the chosen design.

reader_ablation.json: `tables` → table → variant (`"<window>x<blocks>"`, `"@<layer>"` when not the
preset's) → `layer`, `train_s`, `synthetic` (the self-check's report on synthetic validation
questions), `verbalizer` and `phrasings` (`simulations.evaluation.extraction_quality` on the real
held-out questions) and `phrasings_by_mechanism` (the same, for the general templates and the
hand-written sentences apart).
"""

from __future__ import annotations

import argparse
import time
from dataclasses import replace
from pathlib import Path

from simulations.benchmarks.results_md import RESULTS_DIR, command_line, environment, results_md_path, update_section, write_json
from protocol.errors import LlamdexError
from simulations.cli.common import add_data_args, add_out_arg, add_threads_arg, positive_int, set_threads, table_refs

THRESHOLD = 0.97
# Runs stored before each variant recorded its layer all read the default preset's layer, which was 12 then
# (as it is now); their reports say so instead of failing.
LAYER_BEFORE_RECORDED = 12


Variant = tuple[int, int, int | None]   # (window in tokens, mixer blocks, layer read or None for the preset's)


def parse_variants(text: str) -> list[Variant]:
    """"5x2,9x2@20" → [(5, 2, None), (9, 2, 20)]: window in tokens (odd), mixer blocks, and the layer whose
    states the encoder reads (default: the preset's)."""
    out = []
    for item in (t.strip() for t in text.split(",") if t.strip()):
        shape, sep, at = item.lower().partition("@")
        try:
            window, blocks = (int(v) for v in shape.split("x"))
            layer = int(at) if sep else None
        except ValueError:
            raise argparse.ArgumentTypeError(f"variant {item!r} is not WINDOWxBLOCKS or WINDOWxBLOCKS@LAYER (e.g. 9x2, 9x2@20)") from None
        if window < 1 or window % 2 == 0 or blocks < 1:
            raise argparse.ArgumentTypeError(f"variant {item!r}: the window must be an odd number >= 1 and the blocks >= 1")
        if layer is not None and layer < 1:
            raise argparse.ArgumentTypeError(f"variant {item!r}: the layer must be >= 1")
        out.append((window, blocks, layer))
    if not out:
        raise argparse.ArgumentTypeError("give at least one variant")
    return out


def variant_name(variant: Variant) -> str:
    """The report's key for a variant: "9x2", or "9x2@20" when it names its layer."""
    window, blocks, layer = variant
    return f"{window}x{blocks}" + (f"@{layer}" if layer else "")


def column_score(r: dict) -> float | None:
    """One figure per column: the reading (accuracy or exact share) or the missing flag, whichever is lower."""
    reading = r.get("accuracy", r.get("exact"))
    values = [v for v in (reading, r.get("missing_flag_accuracy")) if v is not None]
    return min(values) if values else None


def summary(extraction: dict[str, dict]) -> dict:
    scores = {c: column_score(r) for c, r in extraction.items()}
    scores = {c: s for c, s in scores.items() if s is not None}
    return {"worst": min(scores.values()), "mean": sum(scores.values()) / len(scores),
            "below": {c: round(s, 3) for c, s in sorted(scores.items(), key=lambda kv: kv[1]) if s < THRESHOLD}}


def measure_table(base, table, variants: list[Variant], *, seed: int, max_test: int, questions: int | None, progress: bool) -> dict:
    """Every variant of the encoder for one table, on the frozen `base` LLM's states of its questions."""
    import numpy as np
    import torch

    from simulations.pipeline import held_out_split
    from protocol.encoding import FeatureEncoder
    from protocol.seeding import generator, init_parameters
    from protocol.verbalizer import Verbalizer
    from provider_party.model.connector_training import PRESETS, _config_for
    from provider_party.model.connectors import ExpertDecoder, build_connectors
    from provider_party.model.encoder_training import extraction_report, train_encoder
    from provider_party.model.llamdex_model import LlamdexModel
    from provider_party.model.training_data import build_corpus, cache_encoder_states
    from simulations.evaluation import extraction_quality
    from simulations.phrasings import eval_questions

    df, schema = table.load()
    _, test = held_out_split(df, schema, seed=seed, max_test=max_test)
    p = PRESETS["default"]
    if questions is not None:
        p = replace(p, encoder_questions=questions, decoder_questions=0, min_encoder_questions=min(questions, p.min_encoder_questions),
                    val_questions=min(p.val_questions, max(8, questions // 4)))
    config, _ = _config_for(base, schema, p)
    encoder, _ = build_connectors(config, schema)
    probe = LlamdexModel(base, schema, config, encoder, ExpertDecoder(schema.label.num_classes, base.hidden_size, p.num_tokens))
    fe = FeatureEncoder(schema)
    layers = sorted({layer or config.encoder_layer for _, _, layer in variants})
    if layers[-1] >= base.num_layers:
        raise LlamdexError(f"{base.model_id} has {base.num_layers} layers: cannot read the states entering layer {layers[-1]}; "
                           f"give --variants layers of at most {base.num_layers - 1}")

    t0 = time.perf_counter()
    enc_q, dec_q = p.questions_for(schema)
    corpus = build_corpus(schema, n_synthetic=p.n_synthetic, encoder_questions=enc_q, decoder_questions=dec_q, val_questions=p.val_questions,
                          surrogate_epochs=1, seed=seed)
    train = cache_encoder_states(probe, corpus, np.concatenate([corpus.encoder_idx, corpus.decoder_idx]), p.batch_size, layers,
                                 desc=f"{schema.name}: synthetic questions", progress=progress)
    val = cache_encoder_states(probe, corpus, np.concatenate([corpus.encoder_val_idx, corpus.decoder_val_idx]), p.batch_size, layers,
                               desc=f"{schema.name}: synthetic validation", progress=progress)
    rows = test[schema.feature_names].to_dict("records")
    phrased, kinds = eval_questions(schema, rows, seed=seed)
    real = {"verbalizer": Verbalizer(schema, seed=10_000 + seed).questions(rows), "phrasings": phrased}
    states: dict[str, dict[int, list]] = {}
    with torch.no_grad():
        for name, qs in real.items():
            states[name] = {l: [] for l in layers}
            for s in range(0, len(qs), p.batch_size):
                b = probe.batch(qs[s:s + p.batch_size], with_slots=False)
                for l, h in probe.lm.lower(b, layers).items():
                    states[name][l].append((h.to(torch.float16), b.question_mask, b.numbers))
    x_true = fe.encode_frame(test)
    out: dict = {"frozen_pass_s": round(time.perf_counter() - t0, 1), "questions": {"synthetic": len(corpus.encoder_idx) + len(corpus.decoder_idx),
                                                                                    "real": len(test)}, "variants": {}}
    by_kind = {k: np.array([kind == k for kind in kinds]) for k in sorted(set(kinds))}
    for window, blocks, layer in variants:
        at = layer or config.encoder_layer
        name = variant_name((window, blocks, layer))
        cfg = replace(config, encoder_kernel=window, encoder_mixer_layers=blocks, encoder_layer=at, inject_layer=max(at, config.inject_layer))
        encoder = init_parameters(build_connectors(cfg, schema)[0], generator(seed))
        t = time.perf_counter()
        encoder = train_encoder(encoder.train(), train[at], epochs=p.encoder_epochs, lr=p.encoder_lr, gen=generator(seed), progress=progress,
                                desc=f"{schema.name}: encoder {name}", batch_size=p.encoder_batch, min_steps=p.encoder_min_steps)
        res = {"layer": at, "train_s": round(time.perf_counter() - t, 1), "synthetic": extraction_report(encoder, val[at], fe)}
        with torch.no_grad():
            for kind, batches in states.items():
                x_pred = np.concatenate([encoder.to_expert_input(encoder(h.float(), m, n)).numpy() for h, m, n in batches[at]])
                res[kind] = extraction_quality(fe, x_true, x_pred)
                if kind == "phrasings":
                    res["phrasings_by_mechanism"] = {k: extraction_quality(fe, x_true[mask], x_pred[mask]) for k, mask in by_kind.items()}
        out["variants"][name] = res
        s = summary(res["verbalizer"])
        mechanisms = ", ".join(f"{k} {summary(r)['mean']:.3f}" for k, r in res["phrasings_by_mechanism"].items())
        print(f"{schema.name} {name}: worst column {s['worst']:.3f} on the verbalizer's phrasing, "
              f"{summary(res['phrasings'])['mean']:.3f} mean on the evaluation-only phrasings ({mechanisms})", flush=True)
    return out


def markdown(payload: dict) -> str:
    lines = ["## Reader ablation: the expert encoder's mixer window and the layer it reads, on real held-out questions", "",
             f"Command: `{payload['command']}` ({payload['environment']['cpu_count']} CPU cores, {payload['environment']['date']}).",
             "Same cached states and seed for every variant; encoder alone (no self-check round). Per column the lower of its reading "
             f"(accuracy, or exact share for numbers) and its missing flag; columns below {THRESHOLD} listed. "
             "Eval-only means are over columns, for all the phrasings and for the general templates and hand-written sentences apart.", "",
             "| table | window × blocks @ layer | worst column (verbalizer) | below 0.97 (verbalizer) | mean (eval-only phrasings) | general | hand-written "
             "| worst (eval-only) | encoder training (s) |",
             "|---|---|---|---|---|---|---|---|---|"]
    for table, info in payload["tables"].items():
        for i, (variant, res) in enumerate(info["variants"].items()):
            v, ph = summary(res["verbalizer"]), summary(res["phrasings"])
            below = ", ".join(f"{c} {s:.3f}" for c, s in v["below"].items()) or "none"
            by = {k: f"{summary(r)['mean']:.3f}" for k, r in res.get("phrasings_by_mechanism", {}).items()}
            lines.append(f"| {table if i == 0 else ''} | {variant.split('@')[0].replace('x', ' × ')} @ {res.get('layer', LAYER_BEFORE_RECORDED)} | {v['worst']:.3f} | {below} | "
                         f"{ph['mean']:.3f} | {by.get('general', '–')} | {by.get('hand', '–')} | {ph['worst']:.3f} | {res['train_s']:.0f} |")
    return "\n".join(lines)


def add_arguments(ap: argparse.ArgumentParser) -> argparse.ArgumentParser:
    add_data_args(ap, multiple=True, default="churn,attrition,telco")
    ap.add_argument("--variants", type=parse_variants, default=parse_variants("5x2,9x2,13x2,5x3"),
                    help="comma-separated WINDOWxBLOCKS[@LAYER]: the mixer's window in tokens (odd), its number of blocks, and the layer "
                         "whose states the encoder reads (default: the preset's, 12); all layers come from one frozen pass "
                         "(default 5x2,9x2,13x2,5x3)")
    ap.add_argument("--seed", type=int, default=0, help="seed of the split, the questions and every variant's initial weights (default 0)")
    ap.add_argument("--max-test", type=positive_int, default=500, help="stratified subsample of the held-out split (default 500)")
    ap.add_argument("--questions", type=int, default=None,
                    help="synthetic training questions, and a quarter as many for validation (default: the default preset's counts for the schema)")
    add_threads_arg(ap)
    ap.add_argument("--quiet", action="store_true", help="no progress bars")
    ap.add_argument("--name", default="reader_ablation", type=_report_name,
                    help="the report's name: NAME.json and RESULTS.md's section NAME, so that a second study (of layers, say) "
                         "keeps the first's report (default reader_ablation)")
    add_out_arg(ap, default=RESULTS_DIR, help="folder of the JSON and RESULTS.md's section (default: docs/results)")
    return ap


def _report_name(text: str) -> str:
    if not text.replace("_", "").replace("-", "").isalnum():
        raise argparse.ArgumentTypeError(f"report name {text!r}: use letters, digits, '_' and '-' only")
    return text


def parser() -> argparse.ArgumentParser:
    return add_arguments(argparse.ArgumentParser(prog="python -m simulations.benchmarks.reader_ablation", description=__doc__,
                                                 formatter_class=argparse.RawDescriptionHelpFormatter))


def main(argv: list[str] | None = None) -> int:
    from provider_party.model.base_llm import load_base_llm

    args = parser().parse_args(argv)
    set_threads(args.threads)
    command = command_line("python -m simulations.benchmarks.reader_ablation", argv)
    tables = table_refs(args)
    payload = {"command": command.strip(), "environment": environment(), "seed": args.seed,
               "variants": [variant_name(v) for v in args.variants], "tables": {}}
    t0 = time.perf_counter()
    base = load_base_llm()   # once: every table reads through the same frozen LLM
    for table in tables:
        payload["tables"][table.id] = measure_table(base, table, args.variants, seed=args.seed, max_test=args.max_test, questions=args.questions,
                                                    progress=not args.quiet)
        write_json(f"{args.name}.json", payload, args.out)   # partial results survive an interruption
    payload["wall_s"] = round(time.perf_counter() - t0, 1)
    write_json(f"{args.name}.json", payload, args.out)
    update_section(args.name, markdown(payload), results_md_path(Path(args.out)))
    print(f"wrote {Path(args.out) / (args.name + '.json')} in {payload['wall_s'] / 60:.1f} min")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
