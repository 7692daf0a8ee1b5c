"""The comparison's section of docs/RESULTS.md and its accuracy-against-ε plot, from docs/results/compare.json."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable
from pathlib import Path

import numpy as np

DP_METHODS = ("expert", "llamdex", "expert_calibrated", "llamdex_calibrated", "expert_api", "icl_dp", "lora_dp_mst", "lora_dp_gan",
              "lora_dp_mst_balanced", "lora_dp_gan_balanced")
REFERENCE_METHODS = ("base_llm", "majority_class", "lora_real", "lora_real_balanced")
ORDER = ("base_llm", "majority_class", "expert", "llamdex", "expert_calibrated", "llamdex_calibrated", "expert_api", "icl_dp", "lora_dp_mst", "lora_dp_gan", "lora_dp_mst_balanced",
         "lora_dp_gan_balanced", "lora_real", "lora_real_balanced")
LABELS = {
    "base_llm": "base LLM (no customization)", "majority_class": "majority class", "expert": "client's DP expert alone",
    "llamdex": "**Llamdex**", "expert_calibrated": "client's DP expert for plain accuracy",
    "llamdex_calibrated": "**Llamdex**, expert for plain accuracy", "expert_api": "expert API (LLM extracts, expert answers)", "icl_dp": "ICL with MST rows",
    "lora_dp_mst": "LoRA on MST data", "lora_dp_gan": "LoRA on DP-GAN data", "lora_real": "LoRA on real data (no DP)",
    "lora_dp_mst_balanced": "LoRA on MST data, balanced read-out", "lora_dp_gan_balanced": "LoRA on DP-GAN data, balanced read-out",
    "lora_real_balanced": "LoRA on real data, balanced read-out (no DP)",
}
SYNTH_LORA = ("lora_dp_mst", "lora_dp_gan", "lora_dp_mst_balanced", "lora_dp_gan_balanced")   # the best of both read-outs per metric
TARGET_MARGIN = {"titanic": 10.0, "credit": 10.0}   # points Llamdex must lead by at ε = 1; elsewhere: not below


def measured_rows(units: dict) -> list[dict]:
    """One accuracy row per (dataset, method, ε, seed) over the stored units. Two units can measure the
    same one (a Llamdex unit with the ε curve and one without; the base LLM in both Llamdex variants):
    the later unit's row counts, so a seed is never counted twice in a mean and spread."""
    def key(r: dict) -> tuple:
        return r["dataset"], r["method"], r["epsilon"], r["seed"]

    measured = [u for u in units.values() if u["method"] != "latency"]
    first: dict[tuple, int] = {}
    for u in measured:   # stored order: the tables' columns keep the order the grid ran them in
        for r in u["rows"]:
            first.setdefault(key(r), len(first))
    latest: dict[tuple, dict] = {}
    for u in sorted(measured, key=lambda u: u.get("finished", "")):
        for r in u["rows"]:
            latest[key(r)] = r
    return sorted(latest.values(), key=lambda r: first[key(r)])


def _group(rows: list[dict]) -> dict[tuple, list[dict]]:
    out: dict[tuple, list[dict]] = defaultdict(list)
    for r in rows:
        out[(r["dataset"], r["method"], r["epsilon"])].append(r)
    return out


def _mean_sd(rs: list[dict], key: str) -> tuple[float, float, int]:
    v = np.array([r[key] for r in rs], dtype=float)
    return float(v.mean()), float(v.std(ddof=1)) if len(v) > 1 else 0.0, len(v)


def _cell(rs: list[dict] | None) -> str:
    if not rs:
        return "–"
    a, sa, n = _mean_sd(rs, "accuracy")
    b, sb, _ = _mean_sd(rs, "balanced_accuracy")
    if n == 1:
        return f"{a:.3f} / {b:.3f}"
    return f"{a:.3f}±{sa:.3f} / {b:.3f}±{sb:.3f} ({n})"


def _rows_at(groups, ds: str, method: str, eps: float) -> list[dict] | None:
    """The rows of one cell. References without privacy (ε None, one row per seed after `measured_rows`)
    stand in every ε's table."""
    return groups.get((ds, method, None if method in REFERENCE_METHODS else eps))


def epsilon_table(rows: list[dict], datasets: list[str], eps: float) -> list[str]:
    groups = _group(rows)
    lines = [f"### ε = {eps:g}", "", "accuracy / balanced accuracy; mean ± standard deviation over (n) seeds where more than one ran", "",
             "| method | " + " | ".join(datasets) + " |", "|---|" + "---|" * len(datasets)]
    for m in ORDER:
        cells = [_cell(_rows_at(groups, ds, m, eps)) for ds in datasets]
        if any(c != "–" for c in cells):
            lines.append(f"| {LABELS[m]} | " + " | ".join(cells) + " |")
    return lines


def target_table(rows: list[dict], datasets: list[str], eps: float = 1.0) -> list[str]:
    """Each Llamdex variant against the best DP synthesis + LoRA. The balanced-rule expert is the client's
    default; the calibrated one decides as the fine-tuned baselines do (plain accuracy), so its row is the
    like-for-like comparison in accuracy."""
    groups = _group(rows)
    lines = [f"### Target at ε = {eps:g}: Llamdex against the best DP synthesis + LoRA", "",
             "| dataset | Llamdex's expert decides for | Llamdex acc. | best synth.+LoRA acc. | lead (pts) | Llamdex bal. acc. | "
             "best synth.+LoRA bal. acc. | lead (pts) | target | met |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for ds in datasets:
        cands = [(m, groups[(ds, m, eps)]) for m in SYNTH_LORA if (ds, m, eps) in groups]
        if not cands:
            continue
        ma, best_a = max(((m, _mean_sd(rs, "accuracy")[0]) for m, rs in cands), key=lambda t: t[1])
        mb, best_b = max(((m, _mean_sd(rs, "balanced_accuracy")[0]) for m, rs in cands), key=lambda t: t[1])
        need = TARGET_MARGIN.get(ds, 0.0)
        for variant, rule in (("llamdex", "balanced accuracy"), ("llamdex_calibrated", "plain accuracy")):
            ll = groups.get((ds, variant, eps))
            if not ll:
                continue
            la, lb = _mean_sd(ll, "accuracy")[0], _mean_sd(ll, "balanced_accuracy")[0]
            da, db = 100 * (la - best_a), 100 * (lb - best_b)
            met = "yes" if da >= need and db >= need else "no"
            lines.append(f"| {ds} | {rule} | {la:.3f} | {best_a:.3f} ({ma}) | {da:+.1f} | {lb:.3f} | {best_b:.3f} ({mb}) | {db:+.1f} | "
                         f"≥ {need:+.0f} | {met} |")
    return lines


def cost_table(cost_rows: list[dict]) -> list[str]:
    by_ds: dict[str, dict[str, dict]] = defaultdict(dict)
    for r in cost_rows:
        by_ds[r["dataset"]][r["method"]] = r
    methods = [m for m in ("llamdex", "expert_api", "icl_dp", "lora") if any(m in v for v in by_ds.values())]
    lines = ["### Query cost (batch 1, medians of alternating calls)", "",
             "Targets: Llamdex ≤ 1.10 × the base LLM and ≤ 1/5 of the expert API.", "",
             "| dataset | base LLM (ms) | " + " | ".join(f"{m} (× base)" for m in methods)
             + " | Llamdex / expert API | targets met | prompt tokens (base; ICL) | generated tokens (expert API) |",
             "|---|---|" + "---|" * len(methods) + "---|---|---|---|"]
    for ds, rs in by_ds.items():
        base = rs["base_llm"]
        cells = [f"{rs[m]['ratio_to_base']:.2f}" if m in rs else "–" for m in methods]
        rel, met = "–", "–"
        if "llamdex" in rs and "expert_api" in rs:
            r = rs["llamdex"]["median_s"] / rs["expert_api"]["median_s"]
            rel, met = f"{r:.2f}", "yes" if (rs["llamdex"]["ratio_to_base"] <= 1.10 and r <= 0.2) else "no"
        toks = f"{base['mean_prompt_tokens']:.0f}; {rs['icl_dp']['mean_prompt_tokens']:.0f}" if "icl_dp" in rs else f"{base['mean_prompt_tokens']:.0f}"
        gen = f"{rs['expert_api']['mean_generated_tokens']:.1f} (+{rs['expert_api']['mean_forced_tokens']:.0f} forced)" if "expert_api" in rs else "–"
        lines.append(f"| {ds} | {1000 * base['median_s']:.0f} | " + " | ".join(cells) + f" | {rel} | {met} | {toks} | {gen} |")
    return lines


def extraction_table(units: dict) -> list[str]:
    lines = ["### Expert API: what the LLM's form filling got wrong (seed 0, real held-out questions)", "",
             "| dataset | column | extraction | unparsable |", "|---|---|---|---|"]
    seen = set()
    for u in units.values():
        if u["method"] != "expert_api" or u["seed"] != 0 or u["dataset"] in seen:
            continue
        seen.add(u["dataset"])
        for i, (col, q) in enumerate(u["info"]["extraction"].items()):
            if "mae" in q:
                mae = "–" if q["mae"] is None else f"{q['mae']:.2f}"
                qual = f"MAE {mae} {q.get('unit') or ''}, missing flag {q['missing_flag_accuracy']:.3f}".replace("  ", " ")
            else:
                qual = f"accuracy {q['accuracy']:.3f}"
            lines.append(f"| {u['dataset'] if i == 0 else ''} | {col} | {qual} | {u['info']['unparsed_share'][col]:.3f} |")
    return lines


def time_table(units: dict) -> list[str]:
    per: dict[str, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    for u in units.values():
        for k in ("finetune_s", "synthesis_s", "eval_s", "extract_s", "wall_s"):
            v = u["costs"].get(k) if k != "wall_s" else u["wall_s"]
            if v:
                per[u["method"]][k].append(float(v))
    lines = ["### Run time per unit (seconds: median / max)", "",
             "| method | units | fine-tuning | synthesis | evaluation | extraction | whole unit |", "|---|---|---|---|---|---|---|"]
    for m in ("llamdex", "expert_api", "icl_dp", "lora_dp_mst", "lora_dp_gan", "lora_real", "latency"):
        if m not in per:
            continue
        n = sum(1 for u in units.values() if u["method"] == m)
        cells = [f"{np.median(per[m][k]):.0f} / {max(per[m][k]):.0f}" if per[m][k] else "–" for k in ("finetune_s", "synthesis_s", "eval_s", "extract_s", "wall_s")]
        lines.append(f"| {m} | {n} | " + " | ".join(cells) + " |")
    return lines


def privacy_lines(units: dict) -> list[str]:
    worst: dict[str, float] = {}
    for u in units.values():
        st = u["info"].get("privacy")
        if st:
            worst[st["synthesizer"]] = max(worst.get(st["synthesizer"], 0.0), st["epsilon"] / st["target_epsilon"])
    if not worst:
        return []
    parts = [f"{k}: achieved ε ≤ {v:.4f} × target" for k, v in sorted(worst.items())]
    return ["Privacy of the synthetic tables (δ = the expert's, 1/(10 n)): " + "; ".join(parts) +
            ". MST: zCDP through OpenDP (discrete Gaussian marginals, exponential-mechanism tree, CKS conversion); "
            "DP-GAN: DP-SGD on the discriminator through Opacus, RDP accountant (as the expert)."]


def plot(rows: list[dict], dataset: str, path: Path) -> bool:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups = _group([r for r in rows if r["dataset"] == dataset])
    eps_all = sorted({e for (_, m, e) in groups if e is not None and m in DP_METHODS})
    if len(eps_all) < 2:
        return False
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for ax, key, title in ((axes[0], "accuracy", "accuracy"), (axes[1], "balanced_accuracy", "balanced accuracy")):
        for m in DP_METHODS:
            pts = [(e, _mean_sd(groups[(dataset, m, e)], key)) for e in eps_all if (dataset, m, e) in groups]
            if pts:
                ax.errorbar([p[0] for p in pts], [p[1][0] for p in pts], yerr=[p[1][1] for p in pts], marker="o", capsize=3,
                            label=LABELS[m].replace("**", ""), lw=2.5 if m == "llamdex" else 1.2)
        for m, style in (("base_llm", ":"), ("majority_class", "-."), ("lora_real", "--")):
            rs = _rows_at(groups, dataset, m, eps_all[0])
            if rs:
                ax.axhline(_mean_sd(rs, key)[0], ls=style, color="gray", lw=1)
                ax.annotate(LABELS[m], (eps_all[0], _mean_sd(rs, key)[0]), fontsize=7, color="gray", va="bottom")
        ax.set_xscale("log")
        ax.set_xticks(eps_all, [f"{e:g}" for e in eps_all])
        ax.set_xlabel("ε (δ = 1/(10 n))")
        ax.set_ylabel(title)
        ax.set_title(f"{dataset}: {title} against ε")
    axes[1].legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return True


def _commands(data: dict) -> list[str]:
    """The commands that produced the stored units (in order of first use), else the last one run."""
    cmds = [u["command"] for u in data.get("units", {}).values() if u.get("command")]
    return list(dict.fromkeys(cmds)) or [data.get("command", "")]


def _layers(n) -> str:
    return "every layer" if n is None else f"the top {n} layers"


def table_epsilons(rows: list[dict], datasets: list[str]) -> list[float]:
    """The ε of the per-ε tables: those measured on every table (the curve's extra ε, run on some tables
    only, go to its plot). Read from the units, not from the last command's --epsilons, so that a run
    that refreshed one ε does not drop another's table."""
    on: dict[float, set[str]] = {}
    for r in rows:
        if r["epsilon"] is not None:
            on.setdefault(float(r["epsilon"]), set()).add(r["dataset"])
    return sorted(e for e, ds in on.items() if set(datasets) <= ds)


def markdown(data: dict, plotted: list[str]) -> str:
    units = data.get("units", {})
    rows = measured_rows(units)
    costs = [r for u in units.values() if u["method"] == "latency" for r in u["rows"]]
    datasets = list(dict.fromkeys(r["dataset"] for r in rows))
    s = data.get("settings", {})
    lines = ["## Llamdex against the paper's baselines at the same ε (issue: baselines)", "",
             (f"Command{'s' if len(_commands(data)) > 1 else ''}: {', '.join(f'`{c}`' for c in _commands(data))} "
             f"(preset `{data.get('preset')}`, settings {data.get('settings_digest')}; "
             f"{data.get('environment', {}).get('cpu_count')} CPU cores, torch threads {data.get('environment', {}).get('torch_threads')}; "
             f"last run {data.get('environment', {}).get('date')}, {data.get('last_run_wall_s', 0) / 60:.0f} min). "
             f"Every method answers the same real held-out questions (≤ {s.get('max_test')} per table, the split of `run_pipeline`), "
             "read over the label's verbalizer tokens at the last position; DP methods at the expert's (ε, δ). "
             f"LoRA: rank {s.get('lora', {}).get('rank')} on q/k/v/o of {_layers(s.get('lora', {}).get('layers'))}, {s.get('lora', {}).get('questions')} training questions, "
             f"batch {s.get('lora', {}).get('batch_size')}, lr {s.get('lora', {}).get('lr')}; ICL: k = {s.get('icl_k')} MST rows; "
             f"MST: {s.get('mst', {}).get('bins')} public-range bins per numeric column; DP-GAN: {s.get('gan', {}).get('steps')} DP-SGD steps."), ""]
    for eps in table_epsilons(rows, datasets):
        lines += epsilon_table(rows, datasets, eps) + [""]
    lines += target_table(rows, datasets, 1.0) + [""]
    for ds in plotted:
        lines += [f"### Accuracy against ε on {ds}", "", f"![accuracy against ε on {ds}](results/compare_epsilon_{ds}.png)", ""]
    if costs:
        lines += cost_table(costs) + [""]
    ext = extraction_table(units)
    if len(ext) > 4:
        lines += ext + [""]
    lines += time_table(units) + [""]
    lines += privacy_lines(units) + [""]
    lines += notes(data)
    return "\n".join(lines)


def grid_as_run(units: dict) -> str:
    """The (ε, seeds) of the reported units per table, methods with the same grid named together: what the
    tables above rest on, whatever commands filled them in."""
    per: dict[str, dict[str, tuple[set, set]]] = {}
    for u in units.values():
        if u["method"] == "latency":
            continue
        eps, seeds = per.setdefault(u["dataset"], {}).setdefault(u["method"], (set(), set()))
        eps.update(u["epsilons"])
        seeds.add(u["seed"])
    out = []
    for ds, methods in per.items():
        groups: dict[tuple, list[str]] = {}
        for m, (eps, seeds) in methods.items():
            groups.setdefault((tuple(sorted(eps, key=lambda e: -1 if e is None else e)), tuple(sorted(seeds))), []).append(m)
        parts = [f"{', '.join(ms)} at " + ", ".join("no DP" if e is None else f"{e:g}" for e in eps) + f" [{', '.join(map(str, seeds))}]"
                 for (eps, seeds), ms in groups.items()]
        out.append(f"{ds}: " + "; ".join(parts))
    return " · ".join(out) or "no units yet"


def notes(data: dict) -> list[str]:
    """How the methods were run and why (read with the tables above)."""
    s = data.get("settings", {})
    lora = s.get("lora", {})
    stale = data.get("stale_units", [])
    pending = ([f"- Not shown: {len(stale)} unit(s) in compare.json ran under an earlier recipe of their method and wait to be rerun "
                f"(the same command reruns them): {', '.join(stale)}."] if stale else [])
    return ["### How the methods ran", "", *pending,
            f"- Grid as run (ε, [seeds]): {grid_as_run(data.get('units', {}))}. The held-out split and questions are `run_pipeline`'s "
            "(checked equal in every Llamdex unit).",
            (f"- LoRA (peft): rank {lora.get('rank')}, α {lora.get('alpha')}, q/k/v/o of {_layers(lora.get('layers'))} (the frozen layers below are "
            "computed once per question and cached; SmolLM2 ties its embeddings, which stay frozen), float32, AdamW at learning rate "
            f"{lora.get('lr')}, constant after {lora.get('warmup', 4)} warm-up steps, {lora.get('questions')} questions × {lora.get('epochs')} "
            "epoch(s) in batches of " f"{lora.get('batch_size')}; the loss is the cross-entropy of the same read-out as evaluation. The step "
            "budget and learning rate come from a learning curve on real training questions scored on validation records of the training "
            "split (section `lora_curve`): with fewer steps the adapters had not left the label prior."),
            ("- MST: McKenna et al. (2021) as in Private-PGM's reference code (ρ split in thirds: one-way marginals, exponential-mechanism "
            "spanning tree, two-way marginals; rare values merged below 3σ), OpenDP's discrete Gaussian and noisy max, the tree model fitted by "
            "mirror descent with exact belief propagation, sampled ancestrally; numeric columns in equal-width bins of the schema's public range."),
            ("- DP-GAN: DP-CTGAN-style (per-column straight-through Gumbel-softmax heads, non-saturating loss), the discriminator trained with "
            "DP-SGD through Opacus (Poisson sampling, RDP accountant, the expert's δ). Chosen over PATE-GAN because its guarantee is computed "
            "exactly as the expert's and needs no data-dependent teacher-vote accounting, which published PATE-GAN implementations got wrong "
            "(Ganev et al. 2024); on 1-8 thousand rows at ε ≤ 4 it mostly collapses to few modes (measured on titanic: so does every "
            "discriminator size, learning rate and step count tried), which is what its LoRA rows show."),
            ("- Expert API: the base LLM fills in a form of the schema's fields under a grammar (levels, numbers, `unknown` where nullable), "
            "greedy with a KV cache and jump-forward over the forced field names; the client's DP expert classifies the record and its class "
            "is the answer."),
            (f"- ICL: k = {s.get('icl_k')} rows of the MST table (spread over its label classes) as earlier answered chat turns; the "
            "demonstrations' KV cache is reused for accuracy, and latency is timed without reuse."),
            ("- Llamdex rows come from `run_pipeline` with this comparison's split and experts; refresh them after a connector change with "
            "`llamdex bench compare --methods llamdex --redo` (connectors are reused from the store, or trained with the default preset).")]


def write_report(data: dict, results_dir: Path, md_path: Path, update_section: Callable[[str, str, Path], None]) -> None:
    rows = measured_rows(data.get("units", {}))
    plotted = [ds for ds in data.get("curve_datasets", []) if plot(rows, ds, Path(results_dir) / f"compare_epsilon_{ds}.png")]
    update_section("compare", markdown(data, plotted), md_path)
