"""Attack reports: JSON, a Markdown section and PNG plots (ROC curves, the privacy–utility trade-off).

The input is the privacy–utility results dictionary written by `simulations.benchmarks.privacy_utility`
(see its docstring for the layout); each function here reads only that dictionary, so a report can be
re-rendered from `docs/results/attacks.json` without re-running anything:

    python -c "import json; from simulations.attacks.report import write_all; write_all(json.load(open('docs/results/attacks.json')), 'docs/results')"
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

EPS_LABEL_NONE = "no DP"


def eps_label(eps: float | None) -> str:
    return EPS_LABEL_NONE if eps is None else f"{eps:g}"


def _fmt(v: Any, digits: int = 3) -> str:
    if v is None:
        return "–"
    if isinstance(v, float):
        if math.isinf(v):
            return "∞"
        return f"{v:.{digits}f}"
    return str(v)


def save_json(data: dict[str, Any], path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=1, default=_default) + "\n", encoding="utf-8")
    return path


def _default(v: Any) -> Any:
    if isinstance(v, float) and math.isinf(v):
        return None
    if hasattr(v, "tolist"):
        return v.tolist()
    return str(v)


def _mpl():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _ci(ci: Any, digits: int = 3) -> str:
    return "" if not ci else f" [{ci[0]:.{digits}f}, {ci[1]:.{digits}f}]"


def plot_roc(table: str, runs: list[dict[str, Any]], path: str | Path) -> Path:
    """Two panels: LiRA-online ROC from the provider seat for each ε; every attack at no DP, provider
    seat (solid) and query seat (dashed). Log-log axes so the low-FPR region is visible; the legends
    carry each AUC's 95 % interval."""
    plt = _mpl()
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.8))
    for ax in axes:
        ax.plot([1e-4, 1], [1e-4, 1], color="grey", lw=0.8, ls=":")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlim(1e-3, 1)
        ax.set_ylim(1e-3, 1)
        ax.set_xlabel("false positive rate")
        ax.set_ylabel("true positive rate")
    cmap = plt.get_cmap("viridis")
    for i, run in enumerate(runs):
        r = next((a for a in run["mia"] if a["attack"] == "lira_online" and a["seat"] == "provider" and "roc" in a), None)
        if r is None:
            continue
        axes[0].plot(r["roc"]["fpr"], r["roc"]["tpr"], color=cmap(i / max(len(runs) - 1, 1)),
                     label=f"{'no DP' if run['epsilon_target'] is None else 'ε=' + eps_label(run['epsilon_target'])} "
                           f"(AUC {r['auc']:.3f}{_ci(r.get('auc_ci'))})")
    axes[0].set_title(f"{table}: LiRA online, provider seat")
    axes[0].legend(fontsize=7, loc="lower right")
    nodp = next((run for run in runs if run["epsilon_target"] is None), None)
    if nodp is not None:
        colors: dict[str, str] = {}
        for a in nodp["mia"]:
            if "roc" not in a:
                continue
            c = colors.setdefault(a["attack"], f"C{len(colors)}")
            axes[1].plot(a["roc"]["fpr"], a["roc"]["tpr"], color=c, ls="-" if a["seat"] == "provider" else "--",
                         label=f"{a['attack']} ({a['seat']}, AUC {a['auc']:.3f}{_ci(a.get('auc_ci'))})")
        axes[1].set_title(f"{table}: no DP, provider (solid) vs query seat (dashed)")
        axes[1].legend(fontsize=6, loc="lower right", ncol=1)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _xpos(eps: float | None, finite: list[float]) -> float:
    return eps if eps is not None else (max(finite) * 2.5 if finite else 1.0)


def _errbar(ax: Any, xs: list[float], best: list[dict[str, Any] | None], key: str, ci_key: str, fmt: str, color: str, label: str) -> None:
    pts = [(x, b[key], b[ci_key]) for x, b in zip(xs, best) if b]
    if not pts:
        return
    x, y, ci = zip(*pts)
    lo = [v - c[0] for v, c in zip(y, ci)]
    hi = [c[1] - v for v, c in zip(y, ci)]
    ax.errorbar(x, y, yerr=[lo, hi], fmt=fmt, color=color, capsize=3, label=label)


def plot_tradeoff(data: dict[str, Any], path: str | Path) -> Path:
    """Four panels against ε (no DP drawn at the right end): balanced accuracy of the expert and of
    Llamdex; best MIA AUC per seat and TPR at 1 % FPR (provider seat), each with its 95 % interval;
    the one-run audits' ε lower bounds (gradient and input-space canaries) against the claimed ε."""
    plt = _mpl()
    fig, axes = plt.subplots(1, 4, figsize=(20, 4.6))
    for ti, (table, t) in enumerate(data["tables"].items()):
        runs = t["runs"]
        finite = [r["epsilon_target"] for r in runs if r["epsilon_target"] is not None]
        xs = [_xpos(r["epsilon_target"], finite) for r in runs]
        c = f"C{ti}"
        axes[0].plot(xs, [r.get("expert_balanced_accuracy") for r in runs], "o-", color=c, label=f"{table}: expert")
        if any(r.get("llamdex_balanced_accuracy") is not None for r in runs):
            q = [(x, r["llamdex_balanced_accuracy"]) for x, r in zip(xs, runs) if r.get("llamdex_balanced_accuracy") is not None]
            axes[0].plot(*zip(*q), "s--", color=c, label=f"{table}: Llamdex")
        _errbar(axes[1], xs, [r["best_mia"].get("provider") for r in runs], "auc", "auc_ci", "o-", c, f"{table}: provider")
        _errbar(axes[1], [x * 1.08 for x in xs], [r["best_mia"].get("query") for r in runs], "auc", "auc_ci", "s--", c, f"{table}: query")
        _errbar(axes[2], xs, [r["best_mia"].get("provider") for r in runs], "tpr@1%fpr", "tpr@1%fpr_ci", "^-", c, f"{table}: provider")
        lb = [(x, r["canary"]["epsilon_lb"], r["canary"].get("input_space_epsilon_lb")) for x, r in zip(xs, runs) if r.get("canary")]
        if lb:
            axes[3].plot([v[0] for v in lb], [v[1] for v in lb], "o-", color=c, label=f"{table}: gradient canaries")
            axes[3].plot([v[0] for v in lb], [v[2] for v in lb], "x:", color=c, label=f"{table}: input-space canaries")
    allf = sorted({r["epsilon_target"] for t in data["tables"].values() for r in t["runs"] if r["epsilon_target"] is not None})
    if allf:
        axes[3].plot(allf, allf, color="grey", ls=":", label="claimed ε")
    titles = (("utility", "balanced accuracy on held-out records"), ("best membership inference (95 % intervals)", "AUC"),
              ("best TPR at 1 % FPR, provider seat (95 %)", "TPR"), ("one-run audits (95 %)", "ε lower bound"))
    for ax, (title, ylabel) in zip(axes, titles):
        ax.set_xscale("log")
        ax.set_title(title)
        ax.set_xlabel("target ε (rightmost: no DP)")
        ax.set_ylabel(ylabel)
        ax.legend(fontsize=6)
    if allf:
        ticks = allf + [allf[-1] * 2.5]
        for ax in axes:
            ax.set_xticks(ticks)
            ax.set_xticklabels([f"{v:g}" for v in allf] + ["∞"])
            ax.minorticks_off()
    axes[1].axhline(0.5, color="grey", lw=0.6, ls=":")
    axes[2].axhline(0.01, color="grey", lw=0.6, ls=":")
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _best_cell(b: dict[str, Any] | None, key: str = "auc") -> str:
    if not b:
        return "–"
    if key == "auc":
        star = " †" if b.get("beats_chance") else ""
        return f"{b['auc']:.3f}{_ci(b.get('auc_ci'))} ({b['attack']}){star}"
    return f"{b['tpr@1%fpr']:.3f}{_ci(b.get('tpr@1%fpr_ci'))}"


def targets(data: dict[str, Any]) -> list[str]:
    """The report's targets, each checked against the data: one line per target, met or not, with the figure."""
    lines = []
    tables = data.get("tables", {})
    eps1 = [(t, a) for t, tab in tables.items() for r in tab["runs"] if r["epsilon_target"] == 1.0 for a in r["mia"]]
    for seat in ("provider", "query"):
        rs = [(t, a) for t, a in eps1 if a["seat"] == seat]
        if rs:
            t, worst = max(rs, key=lambda ta: ta[1]["auc_ci"][0])
            ok = worst["auc_ci"][0] <= 0.55
            lines.append(f"ε = 1, {seat} seat: no attack's 95 % interval lies wholly above AUC 0.55 — {'met' if ok else 'NOT met'} "
                         f"(highest lower end {worst['auc_ci'][0]:.3f}: {worst['attack']} on {t}; {len(rs)} attack results)")
    for t, tab in tables.items():
        a = tab.get("overfit_anchor")
        if a and a.get("best"):
            b = a["best"]
            lines.append(f"overfit anchor on {t}: AUC {b['auc']:.3f} [{b['auc_ci'][0]:.3f}, {b['auc_ci'][1]:.3f}] ({b['attack']}) — "
                         f"{'met' if b['auc'] >= 0.65 else 'NOT met'} (target ≥ 0.65"
                         + (f"; {a['typical_share']:.0%} of the records are typical)" if "typical_share" in a else ")"))
    dp_runs = [(t, r) for t, tab in tables.items() for r in tab["runs"] if r["epsilon_target"] is not None and r.get("canary")]
    if dp_runs:
        over = [f"{t} ε={r['epsilon_target']:g}" for t, r in dp_runs if r["canary"]["epsilon_lb"] > (r["canary"]["epsilon_claimed"] or float("inf"))]
        lines.append(f"audit bound ≤ claimed ε for every correct DP run — {'met' if not over else 'NOT met'} ({len(dp_runs)} runs"
                     + (f"; above: {', '.join(over)}" if over else "") + ")")
        at8 = [(t, r["canary"]["epsilon_lb"]) for t, r in dp_runs if r["epsilon_target"] == 8.0]
        if at8:
            lines.append("gradient-canary bound at ε = 8 ≥ 1.0 (95 %) — " + ", ".join(f"{t} {v:.2f} ({'met' if v >= 1.0 else 'NOT met'})" for t, v in at8))
    broken = data.get("broken_dp") or []
    if broken:
        n = sum(b["caught"] for b in broken)
        lines.append(f"broken DP-SGD caught in every seed — {'met' if n == len(broken) else 'NOT met'} ({n} of {len(broken)})")
    return lines


def markdown(data: dict[str, Any], image_prefix: str = "results/") -> str:
    """The Markdown section for docs/RESULTS.md (image links relative to docs/, hence `results/`)."""
    meta = data.get("meta", {})
    out = ["## Attacks and audits: what an uploaded expert reveals", ""]
    out.append(meta.get("summary", "").strip())
    out.append("")
    out.append("Columns: balanced accuracy (and accuracy) of the expert and of Llamdex (the customized LLM, query seat) on held-out "
               "records; the best membership-inference attack from the provider seat (holds the weights) and from the query seat "
               "(sees only the LLM's answers), AUC and TPR at 1 % FPR with 95 % intervals († = its family-wise interval excludes "
               "0.5: it beats chance); the one-run audits' empirical ε lower bounds (95 %; gradient canaries, white-box, and in "
               "brackets input-space canaries) beside the claimed ε (Opacus) and the ε recomputed with dp-accounting; attribute "
               "inference: the attack's advantage over the population baseline on members, with its 95 % interval.")
    out.append("")
    for table, t in data["tables"].items():
        runs = t["runs"]
        out.append(f"### {table}")
        out.append("")
        setup = t.get("setup", {})
        if setup:
            out.append(", ".join(f"{k}: {v}" for k, v in setup.items()))
            out.append("")
        out.append("| target ε | claimed ε | dp-accounting ε | expert bal. acc. (acc.) | Llamdex bal. acc. (acc.) | best AUC, provider "
                   "| TPR@1%FPR, provider | best AUC, query | TPR@1%FPR, query | canary ε lower bound | attribute advantage |")
        out.append("|---|---|---|---|---|---|---|---|---|---|---|")
        for r in runs:
            bp, bq = r["best_mia"].get("provider"), r["best_mia"].get("query")
            can = r.get("canary") or {}
            att = r.get("attribute") or {}
            claimed = r["dp"].get("epsilon")
            lla = "–" if r.get("llamdex_balanced_accuracy") is None else f"{r['llamdex_balanced_accuracy']:.3f} ({r['llamdex_accuracy']:.3f})"
            canary = "–" if not can else f"{can['epsilon_lb']:.2f} ({can.get('input_space_epsilon_lb', 0):.2f})"
            attr = "–" if not att else f"{att['advantage']:+.3f}{_ci(att.get('advantage_ci'))}"
            out.append("| " + " | ".join([
                eps_label(r["epsilon_target"]), _fmt(claimed if claimed is not None else math.inf), _fmt(r.get("epsilon_second")),
                f"{r.get('expert_balanced_accuracy', float('nan')):.3f} ({r['expert_accuracy']:.3f})", lla,
                _best_cell(bp), _best_cell(bp, "tpr"), _best_cell(bq), _best_cell(bq, "tpr"), canary, attr,
            ]) + " |")
        out.append("")
        anchor = t.get("overfit_anchor")
        if anchor:
            lo = anchor["lira_online"]
            rm = anchor.get("rmia")
            typical = f" {anchor['typical_share']:.0%} of its challenge records are typical (unseen shadows already give their label " \
                      "p >= 0.95), which bounds what any attack can find." if "typical_share" in anchor else ""
            out.append(f"Sanity anchor (deliberately overfit non-DP expert, {anchor['target_size']} records, {anchor['epochs']} epochs, no early "
                       f"stopping, {anchor.get('shadows', '?')} shadows): LiRA online AUC {lo['auc']:.3f}{_ci(lo.get('auc_ci'))}, TPR@1%FPR "
                       f"{lo['tpr@1%fpr']:.3f}{_ci(lo.get('tpr@1%fpr_ci'))}"
                       + (f"; RMIA AUC {rm['auc']:.3f}{_ci(rm.get('auc_ci'))}" if rm else "") + "." + typical)
            out.append("")
        out.append(f"![ROC curves, {table}]({image_prefix}roc_{table}.png)")
        out.append("")
    broken = data.get("broken_dp") or []
    if broken:
        caught = sum(b["caught"] for b in broken)
        out.append(f"**A broken DP-SGD is caught.** The same white-box audit of a DP-SGD that adds a tenth of the noise its statement claims "
                   f"(statement, accountant and claimed ε unchanged): caught (lower bound above the claim, 95 %) in {caught} of {len(broken)} runs.")
        out.append("")
        out.append("| table | seed | claimed ε | ε lower bound | caught |")
        out.append("|---|---|---|---|---|")
        for b in broken:
            out.append(f"| {b['dataset']} | {b['seed']} | {b['claimed_epsilon']:.3f} | {b['epsilon_lb']:.3f} | {'yes' if b['caught'] else 'NO'} |")
        out.append("")
    checks = targets(data)
    if checks:
        out.append("**Targets.**")
        out.append("")
        out.extend(f"- {c}" for c in checks)
        out.append("")
    out.append(f"![privacy–utility trade-off]({image_prefix}tradeoff.png)")
    out.append("")
    notes = meta.get("notes")
    if notes:
        out.extend(f"- {n}" for n in notes)
        out.append("")
    missing = meta.get("missing")
    if missing:
        out.append("Not yet run (the report is resumable): " + "; ".join(missing) + ".")
        out.append("")
    cmd = meta.get("command")
    if cmd:
        comp = meta.get("compute_minutes") or {}
        spent = (f"{comp.get('provider', 0):g} minutes of provider-seat runs and {comp.get('query', 0):g} of query-seat runs, cached, "
                 if comp else f"{meta.get('wall_minutes', '?')} minutes ")
        out.append(f"Reproduce: `{cmd}` ({spent}on {meta.get('machine', 'this machine')}).")
        out.append("")
    return "\n".join(out)


def write_all(data: dict[str, Any], folder: str | Path) -> list[Path]:
    """attacks.json, attacks.md, roc_<table>.png per table and tradeoff.png into `folder`, and the same
    Markdown as the `attacks` section of RESULTS.md (docs/RESULTS.md for docs/results, else one beside)."""
    from simulations.benchmarks.results_md import results_md_path, update_section

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    paths = [save_json(data, folder / "attacks.json")]
    md = markdown(data)
    (folder / "attacks.md").write_text(md, encoding="utf-8")
    paths.append(folder / "attacks.md")
    update_section("attacks", md, results_md_path(folder))
    paths.append(results_md_path(folder))
    for table, t in data["tables"].items():
        paths.append(plot_roc(table, t["runs"], folder / f"roc_{table}.png"))
    paths.append(plot_tradeoff(data, folder / "tradeoff.png"))
    return paths


__all__ = ["eps_label", "markdown", "plot_roc", "plot_tradeoff", "save_json", "write_all"]
