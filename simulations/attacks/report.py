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


def plot_roc(table: str, runs: list[dict[str, Any]], path: str | Path) -> Path:
    """Two panels: LiRA-online ROC from the provider seat for each ε; every attack at no DP, provider
    seat (solid) and query seat (dashed). Log-log axes so the low-FPR region is visible."""
    plt = _mpl()
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.6))
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
                     label=f"{'no DP' if run['epsilon_target'] is None else 'ε=' + eps_label(run['epsilon_target'])} (AUC {r['auc']:.3f})")
    axes[0].set_title(f"{table}: LiRA online, provider seat")
    axes[0].legend(fontsize=8, loc="lower right")
    nodp = next((run for run in runs if run["epsilon_target"] is None), None)
    if nodp is not None:
        colors = {}
        for a in nodp["mia"]:
            if "roc" not in a:
                continue
            c = colors.setdefault(a["attack"], f"C{len(colors)}")
            axes[1].plot(a["roc"]["fpr"], a["roc"]["tpr"], color=c, ls="-" if a["seat"] == "provider" else "--",
                         label=f"{a['attack']} ({a['seat']}, AUC {a['auc']:.3f})")
        axes[1].set_title(f"{table}: no DP, provider (solid) vs query seat (dashed)")
        axes[1].legend(fontsize=7, loc="lower right", ncol=1)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _xpos(eps: float | None, finite: list[float]) -> float:
    return eps if eps is not None else (max(finite) * 2.5 if finite else 1.0)


def plot_tradeoff(data: dict[str, Any], path: str | Path) -> Path:
    """Three panels against ε (no DP drawn at the right end): accuracy of the expert and of Llamdex;
    best MIA AUC and TPR at 1 % FPR; empirical ε lower bound against the claimed ε."""
    plt = _mpl()
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.4))
    for ti, (table, t) in enumerate(data["tables"].items()):
        runs = t["runs"]
        finite = [r["epsilon_target"] for r in runs if r["epsilon_target"] is not None]
        xs = [_xpos(r["epsilon_target"], finite) for r in runs]
        c = f"C{ti}"
        axes[0].plot(xs, [r["expert_accuracy"] for r in runs], "o-", color=c, label=f"{table}: expert")
        if any(r.get("llamdex_accuracy") is not None for r in runs):
            axes[0].plot(xs, [r.get("llamdex_accuracy") for r in runs], "s--", color=c, label=f"{table}: Llamdex")
        axes[1].plot(xs, [r["best_mia"]["provider"]["auc"] for r in runs], "o-", color=c, label=f"{table}: best AUC")
        axes[1].plot(xs, [r["best_mia"]["provider"]["tpr@1%fpr"] for r in runs], "^:", color=c, label=f"{table}: best TPR@1%FPR")
        lb = [r["canary"]["epsilon_lb"] if r.get("canary") else None for r in runs]
        axes[2].plot(xs, lb, "o-", color=c, label=f"{table}: empirical ε lower bound")
    allf = sorted({r["epsilon_target"] for t in data["tables"].values() for r in t["runs"] if r["epsilon_target"] is not None})
    if allf:
        axes[2].plot(allf, allf, color="grey", ls=":", label="claimed ε")
    for ax, title, ylabel in ((axes[0], "utility", "accuracy on held-out records"), (axes[1], "membership inference (provider seat)", "AUC / TPR"),
                              (axes[2], "one-run canary audit (95 %)", "ε")):
        ax.set_xscale("log")
        ax.set_title(title)
        ax.set_xlabel("target ε (rightmost: no DP)")
        ax.set_ylabel(ylabel)
        ax.legend(fontsize=7)
    if allf:
        ticks = allf + [allf[-1] * 2.5]
        for ax in axes:
            ax.set_xticks(ticks)
            ax.set_xticklabels([f"{v:g}" for v in allf] + ["∞"])
            ax.minorticks_off()
    axes[1].axhline(0.5, color="grey", lw=0.6, ls=":")
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def markdown(data: dict[str, Any], image_prefix: str = "results/") -> str:
    """The Markdown section for docs/RESULTS.md (image links relative to docs/, hence `results/`)."""
    meta = data.get("meta", {})
    out = ["## Attacks and audits: what an uploaded expert reveals", ""]
    out.append(meta.get("summary", "").strip())
    out.append("")
    out.append("Columns: accuracy of the expert and of Llamdex (the customized LLM, query seat) on held-out records; best "
               "membership-inference AUC and TPR at 1 % FPR over all attacks from the provider seat (holds the weights) and from the "
               "query seat (sees only the LLM's answers); empirical ε lower bound of the one-run canary audit (95 %, max over seeds) "
               "beside the claimed ε (Opacus) and the ε recomputed with dp-accounting.")
    out.append("")
    for table, t in data["tables"].items():
        runs = t["runs"]
        out.append(f"### {table}")
        out.append("")
        setup = t.get("setup", {})
        if setup:
            out.append(", ".join(f"{k}: {v}" for k, v in setup.items()))
            out.append("")
        out.append("| target ε | claimed ε | dp-accounting ε | expert acc. | Llamdex acc. | best AUC (provider) | TPR@1%FPR (provider) "
                   "| best AUC (query) | TPR@1%FPR (query) | canary ε lower bound | attribute: attack / population (members) |")
        out.append("|---|---|---|---|---|---|---|---|---|---|---|")
        for r in runs:
            bp, bq = r["best_mia"].get("provider") or {}, r["best_mia"].get("query") or {}
            can = r.get("canary") or {}
            att = r.get("attribute") or {}
            claimed = r["dp"].get("epsilon")
            out.append("| " + " | ".join([
                eps_label(r["epsilon_target"]), _fmt(claimed if claimed is not None else math.inf), _fmt(r.get("epsilon_second")),
                _fmt(r["expert_accuracy"]), _fmt(r.get("llamdex_accuracy")),
                f"{_fmt(bp.get('auc'))} ({bp.get('attack', '–')})", _fmt(bp.get("tpr@1%fpr")),
                f"{_fmt(bq.get('auc'))} ({bq.get('attack', '–')})" if bq else "–", _fmt(bq.get("tpr@1%fpr")) if bq else "–",
                _fmt(can.get("epsilon_lb")), f"{_fmt(att.get('attack_members'))} / {_fmt(att.get('population_members'))}" if att else "–",
            ]) + " |")
        out.append("")
        anchor = t.get("overfit_anchor")
        if anchor:
            lo = anchor["lira_online"]
            out.append(f"Sanity anchor (deliberately overfit non-DP expert, {anchor['target_size']} records, {anchor['epochs']} epochs): "
                       f"LiRA online AUC {lo['auc']:.3f}, TPR@1%FPR {lo['tpr@1%fpr']:.3f}; LiRA offline AUC "
                       f"{anchor['lira_offline']['auc']:.3f}.")
            out.append("")
        out.append(f"![ROC curves, {table}]({image_prefix}roc_{table}.png)")
        out.append("")
    out.append(f"![privacy–utility trade-off]({image_prefix}tradeoff.png)")
    out.append("")
    notes = meta.get("notes")
    if notes:
        out.extend(f"- {n}" for n in notes)
        out.append("")
    cmd = meta.get("command")
    if cmd:
        out.append(f"Reproduce: `{cmd}` ({meta.get('wall_minutes', '?')} minutes on {meta.get('machine', 'this machine')}).")
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
