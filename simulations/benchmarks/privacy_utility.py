"""Privacy–utility benchmark: for each ε (and no DP) on every registered table, utility and what attacks get.

Run (the figures in docs/results; resumable: every finished piece is cached under --cache and skipped
on rerun, so an interrupted run continues where it stopped):

    python -m simulations.benchmarks.privacy_utility                           # both seats: the published report
    python -m simulations.benchmarks.privacy_utility --seats provider          # provider seat only, all ε, all tables
    python -m simulations.benchmarks.privacy_utility --seats query             # query seat (needs the LLM), ε in --query-epsilons
    python -m simulations.benchmarks.privacy_utility --render-only             # rebuild the report from the cache

Two processes on different `--data` may share the cache (each (table, ε) piece is written by one of
them), but on 2 cores they are slower than one: each process uses two threads by default, and four
threads on two cores took 3-6 times longer per query-seat step than one process alone. On a bigger
machine, give each process its share with `--threads`.

Per table, one seeded split is fixed (`sizes_for`): the client's training set, held-out records (the
non-members, also the test set for accuracy) and the attacker's auxiliary population. For each ε the
client trains its expert with its own recipe (`TrainConfig`, DP-SGD through Opacus when ε is finite),
then, from the **provider seat** (`--seats provider`):

- expert accuracy and balanced accuracy on the held-out records;
- membership inference: five score attacks, LiRA online/offline and RMIA online/offline with
  `--shadows` shadow experts (one set: each challenge record in half of them), 500 members and 500
  non-members (fewer where the table is small), each AUC and TPR with its 95 % interval;
- attribute inference of the schema's sensitive column against the population baseline, with intervals;
- one-run audits (`--canary-seeds` seeds each): gradient canaries (white-box, Dirac canaries in the
  clipped per-sample gradients, the bound that can fail) and input-space canaries (black-box), each
  at 95 %, beside the claimed ε (Opacus) and the ε recomputed with dp-accounting;
- at `--broken-epsilon`, the same gradient-canary audit of a deliberately broken DP-SGD (a tenth of
  the claimed noise, `simulations.attacks.faults.weakened_noise`) for `--broken-seeds` seeds: the
  top-level `broken_dp` list says whether each was caught (bound above the claim).

The target and shadow experts are cached (safetensors), so the **query seat** (`--seats query`, the
customized LLM's answers through connectors trained with `--preset` (default: the benchmarks' `default`)
from the schema alone, read from or trained into the connector store `--connectors`)
attacks exactly the same experts, later and on its own, for the ε in `--query-epsilons`, with
`--query-records` members and as many non-members, LiRA/RMIA with the first `--query-shadows` shadows.

A deliberately overfit non-DP expert (small training set, many epochs, no early stopping) is attacked
once per table as a sanity anchor: LiRA must find members there, or the attack code is broken.

Results JSON layout: {"meta", "broken_dp": [{"dataset", "seed", "claimed_epsilon", "epsilon_lb", "caught"}],
"tables": {<table>: {"setup", "connectors", "overfit_anchor", "runs": [{"epsilon_target", "dp",
"epsilon_recomputed", "epsilon_second", "expert_accuracy", "expert_balanced_accuracy", "llamdex_accuracy",
"llamdex_balanced_accuracy", "mia": [attack results: auc, auc_ci, tpr@1%fpr, tpr@1%fpr_ci, ..., roc],
"best_mia": {"provider", "query"}, "attribute", "canary": {"epsilon_lb", "epsilon_claimed", ...}}]}}}.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

DEFAULT_TABLES = ("titanic", "default", "credit", "churn")
DEFAULT_EPSILONS = "0.5,1,2,4,8,none"
RESULTS_DIR = Path(__file__).resolve().parents[2] / "docs" / "results"
CACHE_DIR = Path("runs/cache/privacy_utility")


def _log(msg: str, t0: float) -> None:
    print(f"[{(time.perf_counter() - t0) / 60:6.1f} min] {msg}", flush=True)


def eps_key(eps: float | None) -> str:
    return "none" if eps is None else f"{eps:g}"


SPLIT_RULE = 2   # the version of `sizes_for`: cached pieces of another rule are not reused


@dataclass(frozen=True)
class Sizes:
    target: int
    members: int
    nonmembers: int


def sizes_for(n_rows: int, target: int = 1000, challenge: int = 500) -> Sizes:
    """The split of a table of n rows: the attacker's population keeps a fifth of the table (at most 300
    rows); of the rest, `challenge` non-members and a training set of up to `target` records, from which
    `challenge` members are drawn. Where the table is too small for both counts the non-members give way
    down to a third of the table (the training set must still hold the members); the counts attacked
    are what the intervals are made of, so the training set shrinks before they do."""
    aux = min(300, n_rows // 5)
    nonmembers = min(challenge, max(n_rows // 3, n_rows - aux - challenge))
    t = min(target, n_rows - nonmembers - aux)
    return Sizes(t, min(challenge, t), nonmembers)


# The options each piece's figures depend on beyond the split (which names the cache folder): a piece
# measured with other values is another piece (its file name carries their digest), never reused for these.
PIECE_SETTINGS = {
    "experts.json": ("shadows",),         # the target expert and its shadow experts
    "experts.safetensors": ("shadows",),
    "provider.json": ("shadows", "population", "canaries", "canary_seeds"),
    "query.json": ("shadows", "query_records", "query_population", "query_shadows"),
    "broken_dp.json": ("canaries",),
}


def piece_settings(args: argparse.Namespace) -> dict[str, dict[str, Any]]:
    """Per cached piece, the values of `PIECE_SETTINGS` in this run."""
    return {name: {k: getattr(args, k) for k in keys} for name, keys in PIECE_SETTINGS.items()}


class Cache:
    """The per-(table, ε) pieces of the benchmark as files; a piece that exists is never recomputed.

    Pieces live under the digest of the client's default recipe (`default_recipe_digest`) and under the
    split's settings (`sizes_for`'s rule, --target-size, --challenge, --seed): every piece rests on
    experts trained with that recipe on that split, so a change of either starts afresh instead of
    silently mixing attacks on other experts or other records into the report. A piece whose figures
    also depend on attack settings (`PIECE_SETTINGS`: shadows, population, canaries, query sizes) is
    named by their digest too, so a run with other settings measures its own pieces."""

    def __init__(self, root: Path, recipe: str | None = None, *, target: int = 1000, challenge: int = 500, seed: int = 0,
                 settings: dict[str, dict[str, Any]] | None = None):
        from client_party.expert_training import default_recipe_digest

        self.recipe = recipe or default_recipe_digest()
        self.root = (root / ("recipe-" + self.recipe.removeprefix("sha256:"))
                     / f"split-v{SPLIT_RULE}-t{target}-c{challenge}-s{seed}")
        self.settings = settings or {}

    def path(self, table: str, eps: float | None, name: str) -> Path:
        if name in self.settings:
            import hashlib

            digest = hashlib.sha256(json.dumps(self.settings[name], sort_keys=True).encode()).hexdigest()[:12]
            stem, _, ext = name.rpartition(".")
            name = f"{stem}-{digest}.{ext}"
        return self.root / table / eps_key(eps) / name

    def load(self, table: str, eps: float | None, name: str) -> Any:
        p = self.path(table, eps, name)
        return json.loads(p.read_text()) if p.exists() else None

    def save(self, table: str, eps: float | None, name: str, data: Any) -> None:
        p = self.path(table, eps, name)
        p.parent.mkdir(parents=True, exist_ok=True)
        tmp = p.with_suffix(".tmp")
        tmp.write_text(json.dumps(data, indent=1, default=_json_default) + "\n")
        tmp.replace(p)


def _json_default(v: Any) -> Any:
    if isinstance(v, float) and math.isinf(v):
        return None
    if hasattr(v, "tolist"):
        return v.tolist()
    return str(v)


# --- the experts (trained once, cached) -------------------------------------------------------------


def experts(table: str, eps: float | None, data: dict[str, Any], args: argparse.Namespace, cache: Cache):
    """(target TrainedExpert-like (model, dp), Shadows) for one (table, ε): from the cache or trained now."""
    from safetensors.torch import load_file, save_file

    from client_party.expert_training import train_expert
    from protocol.dp import DPStatement
    from protocol.expert_spec import ExpertSpec, build_expert
    from simulations.attacks.mia import Shadows, torch_threads, train_config, train_shadows

    meta = cache.load(table, eps, "experts.json")
    weights = cache.path(table, eps, "experts.safetensors")
    if meta is not None and weights.exists():   # both named by the shadow count (PIECE_SETTINGS)
        tensors = load_file(str(weights))
        spec = ExpertSpec.from_dict(meta["spec"])

        def model(prefix: str):
            m = build_expert(spec)
            m.load_state_dict({k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)})
            return m.eval()

        shadows = Shadows([model(f"shadow{i}.") for i in range(meta["shadows"])], [np.array(r) for r in meta["shadow_rows"]])
        return model("target."), DPStatement.from_dict(meta["dp"]), shadows, meta
    x, y, split, schema = data["x"], data["y"], data["split"], data["schema"]
    cfg = train_config(eps, seed=args.seed)
    t0 = time.perf_counter()
    with torch_threads(1):
        trained = train_expert(x[split.train], y[split.train], schema, cfg)
        shadows = train_shadows(x, y, schema, cfg, split, args.shadows, seed=args.seed)
    tensors = {f"target.{k}": v.contiguous() for k, v in trained.model.state_dict().items()}
    for i, m in enumerate(shadows.models):
        tensors.update({f"shadow{i}.{k}": v.contiguous() for k, v in m.state_dict().items()})
    weights.parent.mkdir(parents=True, exist_ok=True)
    tmp = weights.with_name(weights.name + ".tmp")
    save_file(tensors, str(tmp))
    tmp.replace(weights)   # experts.json, written next, is what marks the pair complete
    meta = {"spec": trained.model.spec.to_dict(), "dp": trained.dp.to_dict(), "shadows": len(shadows), "shadow_rows": [r.tolist() for r in shadows.rows],
            "seconds": round(time.perf_counter() - t0, 1), "epochs_run": trained.epochs_run}
    cache.save(table, eps, "experts.json", meta)
    return trained.model.eval(), trained.dp, shadows, meta


# --- provider seat ----------------------------------------------------------------------------------


def provider_seat(table: str, eps: float | None, data: dict[str, Any], args: argparse.Namespace, cache: Cache, t0: float) -> dict[str, Any]:
    from simulations.attacks.attribute import attribute_inference
    from simulations.attacks.canary import run_canary_audit
    from simulations.attacks.gradient_canary import run_gradient_canary_audit
    from protocol.dp import recompute
    from simulations.attacks.mia import (
        ExpertChannel, attack_view, balanced_accuracy, log_probs, observe, population_rows, torch_threads, train_config,
    )
    from simulations.audit import second_accountant_epsilon

    done = cache.load(table, eps, "provider.json")
    if done is not None:
        return done
    x, y, split, schema, df = data["x"], data["y"], data["split"], data["schema"], data["df"]
    tt = time.perf_counter()
    model, dp, shadows, meta = experts(table, eps, data, args, cache)
    times = {"experts": meta["seconds"]}
    pred = log_probs(model, x[split.out]).argmax(1)
    ch, z = split.challenge, population_rows(split, args.population, args.seed)
    t = time.perf_counter()
    view = observe(ExpertChannel(x[ch]), model, shadows.models, y[ch], split.is_member, shadows.inclusion(ch), ExpertChannel(x[z]), y[z],
                   shadows.inclusion(z))
    mia = [r.to_dict(with_roc=True) for r in attack_view(view, delta=float(dp.delta))]
    times["attacks"] = time.perf_counter() - t
    att = None
    if schema.sensitive_columns:
        att = attribute_inference(model, schema, df.iloc[ch].reset_index(drop=True), split.is_member, df.iloc[split.aux], seed=args.seed).to_dict()
    t = time.perf_counter()
    grad, inp = [], []
    for s in range(args.canary_seeds):
        seed = args.seed + 100 * s
        cfg = train_config(eps, seed=seed)
        with torch_threads(1):
            grad.append(run_gradient_canary_audit(x[split.train], y[split.train], schema, cfg, m=args.canaries, seed=seed,
                                                  noise_seed=seed).to_dict())
            inp.append(run_canary_audit(x[split.train], y[split.train], schema, cfg, m=args.canaries, seed=seed,
                                        x_test=x[split.out], y_test=y[split.out]).to_dict())
    times["canaries"] = time.perf_counter() - t
    best_grad = max(grad, key=lambda c: c["epsilon_lb"]) if grad else None
    canary = None
    if best_grad is not None:
        canary = {"epsilon_lb": best_grad["epsilon_lb"], "epsilon_claimed": best_grad["epsilon_claimed"],
                  "epsilon_recomputed": best_grad["epsilon_recomputed"], "epsilon_second_accountant": best_grad["epsilon_second_accountant"],
                  "confidence": best_grad["confidence"], "kind": "gradient canaries (white-box), max over seeds",
                  "exceeds_claim": any(c["exceeds_claim"] for c in grad),
                  "input_space_epsilon_lb": max(c["epsilon_lb"] for c in inp), "gradient_seeds": grad, "input_space_seeds": inp}
    run = {
        "epsilon_target": eps, "dp": dp.to_dict(),
        "epsilon_recomputed": recompute(dp) if dp.is_private else None,
        "epsilon_second": second_accountant_epsilon(dp) if dp.is_private else None,
        "expert_accuracy": float((pred == y[split.out]).mean()), "expert_balanced_accuracy": balanced_accuracy(pred, y[split.out]),
        "mia": mia, "best_mia": {"provider": _best(mia, "provider")},
        "attribute": att, "canary": canary, "timings": {k: round(v, 1) for k, v in times.items()},
        "seconds": round(time.perf_counter() - tt, 1),
    }
    cache.save(table, eps, "provider.json", run)
    bp = run["best_mia"]["provider"]
    _log(f"{table} {'no DP' if eps is None else f'ε={eps:g} (claimed {dp.epsilon:.3f})'}: expert acc {run['expert_accuracy']:.3f} "
         f"(balanced {run['expert_balanced_accuracy']:.3f}); best provider AUC {bp['auc']:.3f} [{bp['auc_ci'][0]:.3f}, {bp['auc_ci'][1]:.3f}] "
         f"({bp['attack']}); gradient-canary ε_lb {canary['epsilon_lb'] if canary else float('nan'):.3f}, input-space "
         f"{canary['input_space_epsilon_lb'] if canary else float('nan'):.3f} ({run['seconds']:.0f} s)", t0)
    return run


def _best(mia: list[dict[str, Any]], seat: str) -> dict[str, Any] | None:
    """The best attack of a seat (by AUC; by TPR at 1 % FPR) from result dictionaries, with intervals."""
    rs = [r for r in mia if r["seat"] == seat]
    if not rs:
        return None
    by_auc = max(rs, key=lambda r: r["auc"])
    by_tpr = max(rs, key=lambda r: r["tpr@1%fpr"])
    fam = by_auc.get("auc_ci_family") or by_auc["auc_ci"]
    return {"attack": by_auc["attack"], "auc": by_auc["auc"], "auc_ci": by_auc["auc_ci"], "auc_ci_family": fam,
            "tpr@1%fpr": by_tpr["tpr@1%fpr"], "tpr@1%fpr_ci": by_tpr["tpr@1%fpr_ci"], "tpr_attack": by_tpr["attack"],
            "attacks_compared": len(rs), "beats_chance": fam[0] > 0.5, "tpr_beats_chance": by_tpr["tpr@1%fpr_ci"][0] > 0.01,
            "max_auc_ci_low": max(r["auc_ci"][0] for r in rs), "n_members": by_auc["n_members"], "n_nonmembers": by_auc["n_nonmembers"]}


def broken_dp(table: str, data: dict[str, Any], args: argparse.Namespace, cache: Cache, t0: float) -> list[dict[str, Any]]:
    """The gradient-canary audit of a DP-SGD that adds a tenth of its claimed noise, per seed."""
    from simulations.attacks.faults import weakened_noise
    from simulations.attacks.gradient_canary import run_gradient_canary_audit
    from simulations.attacks.mia import torch_threads, train_config

    eps = args.broken_epsilon
    done = cache.load(table, eps, "broken_dp.json")
    if done is not None and len(done) >= args.broken_seeds:
        return done[:args.broken_seeds]
    x, y, split, schema = data["x"], data["y"], data["split"], data["schema"]
    out = []
    for s in range(args.broken_seeds):
        seed = args.seed + 1000 + s
        with torch_threads(1), weakened_noise(0.1):
            a = run_gradient_canary_audit(x[split.train], y[split.train], schema, train_config(eps, seed=seed), m=args.canaries, seed=seed,
                                          noise_seed=seed)   # seeded: each seed's verdict replays
        out.append({"dataset": table, "seed": seed, "claimed_epsilon": round(a.epsilon_claimed, 5), "epsilon_lb": round(a.epsilon_lb, 5),
                    "confidence": a.confidence, "noise_factor": 0.1, "caught": bool(a.exceeds_claim)})
        _log(f"{table} broken DP-SGD (a tenth of the noise), seed {seed}: ε_lb {a.epsilon_lb:.3f} vs claimed {a.epsilon_claimed:.3f}: "
             f"{'caught' if a.exceeds_claim else 'NOT caught'}", t0)
    cache.save(table, eps, "broken_dp.json", out)
    return out


ANCHOR = dict(target_size=50, epochs=300, batch_size=25, lr=1e-2, shadows=16)


def overfit_anchor(table: str, args: argparse.Namespace, cache: Cache) -> dict[str, Any]:
    """LiRA and RMIA against a deliberately overfit non-DP expert (`ANCHOR`: 50 records, 300 epochs at lr
    1e-2, no early stopping). Also measures how much there is to find: the share of challenge records
    that are *typical*, i.e. whose label the shadows that never saw them already give p >= 0.95 (a
    memorized typical record looks like an unseen one). Its records are drawn label-balanced: drawn
    at random from an imbalanced table nearly all of them are typical (ISLR Default, 3 % defaults:
    92 %, best AUC 0.547 [0.431, 0.662]), and the anchor, which must show that the attacks find
    memorization where there is some, would have almost nothing to find."""
    from client_party.datasets import encode_table, load_table
    from client_party.expert_training import train_expert
    from simulations.attacks.mia import (
        ExpertChannel, _log_py, attack_view, make_split, observe, population_rows, torch_threads, train_config, train_shadows,
    )

    done = cache.load(table, None, "anchor.json")
    if done is not None:
        return done
    df, schema = load_table(table)
    x, y = encode_table(df, schema)
    n = ANCHOR["target_size"]
    split = make_split(len(df), n, n, n, args.seed, balance_labels=y)
    cfg = train_config(None, epochs=ANCHOR["epochs"], batch_size=ANCHOR["batch_size"], lr=ANCHOR["lr"], seed=args.seed, early_stopping=False)
    with torch_threads(1):
        target = train_expert(x[split.train], y[split.train], schema, cfg).model
        shadows = train_shadows(x, y, schema, cfg, split, ANCHOR["shadows"], seed=args.seed)
    ch, z = split.challenge, population_rows(split, 200, args.seed)
    view = observe(ExpertChannel(x[ch]), target, shadows.models, y[ch], split.is_member, shadows.inclusion(ch), ExpertChannel(x[z]), y[z],
                   shadows.inclusion(z))
    results = attack_view(view, ("loss", "lira_online", "lira_offline", "rmia"))
    out_p = np.exp(_log_py(view.shadows, view.y))
    typical = np.nanmean(np.where(~view.inclusion, out_p, np.nan), axis=0) >= 0.95
    out = {**ANCHOR, "expert_accuracy": float((view.target.argmax(1)[~view.is_member] == view.y[~view.is_member]).mean()),
           "typical_share": round(float(typical.mean()), 4)}
    for r in results:
        out[r.attack] = r.to_dict()
    best = max(results, key=lambda r: r.auc)
    out["best"] = {"attack": best.attack, "auc": round(best.auc, 5), "auc_ci": [round(v, 5) for v in best.auc_ci]}
    cache.save(table, None, "anchor.json", out)
    return out


# --- query seat -------------------------------------------------------------------------------------


def query_seat(table: str, eps: float | None, data: dict[str, Any], args: argparse.Namespace, cache: Cache, llm: Any, t0: float) -> dict[str, Any]:
    from simulations.attacks.mia import (
        MIAConfig, Shadows, attack_view, balanced_accuracy, build_query_channels, log_probs, observe, population_rows, query_selection,
    )

    done = cache.load(table, eps, "query.json")
    if measured_with(done, args.preset, served_connectors(data["schema"], args, llm)):
        return done
    x, y, split, df = data["x"], data["y"], data["split"], data["df"]
    model, dp, shadows, _ = experts(table, eps, data, args, cache)
    if "channels" not in data:
        lm, connectors = llamdex_model(data["schema"], args, llm)
        qcfg = MIAConfig(query_members=args.query_records, query_nonmembers=args.query_records, query_population=args.query_population, seed=args.seed)
        t = time.perf_counter()
        data["channels"] = build_query_channels(lm, df, split, qcfg, progress=True)
        data["qcfg"], data["connectors"], data["channel_seconds"] = qcfg, connectors, time.perf_counter() - t
        _log(f"{table}: query seat ready ({len(data['channels'][0])} + {len(data['channels'][1])} questions through the frozen LLM layers once, "
             f"{time.perf_counter() - t:.0f} s)", t0)
    channel, z_channel = data["channels"]
    qcfg = data["qcfg"]
    sel = query_selection(split, qcfg)
    rows, member = split.challenge[sel], split.is_member[sel]
    z = population_rows(split, qcfg.query_population, args.seed)
    k = min(args.query_shadows, len(shadows))
    used = Shadows(shadows.models[:k], shadows.rows[:k])
    t = time.perf_counter()
    view = observe(channel, model, used.models, y[rows], member, used.inclusion(rows), z_channel, y[z], used.inclusion(z))
    results = attack_view(view, delta=float(dp.delta))
    held = ~member
    llm_pred = view.target.argmax(1)
    out = {"epsilon_target": eps, "connectors": data["connectors"], "shadows": k, "mia": [r.to_dict(with_roc=True) for r in results],
           "llamdex_accuracy": float((llm_pred[held] == y[rows][held]).mean()),
           "llamdex_balanced_accuracy": balanced_accuracy(llm_pred[held], y[rows][held]),
           "expert_accuracy_query_subset": float((log_probs(model, x[rows[held]]).argmax(1) == y[rows][held]).mean()),
           "seconds": round(time.perf_counter() - t + data.pop("channel_seconds", 0.0), 1)}
    cache.save(table, eps, "query.json", out)
    b = _best(out["mia"], "query")
    _log(f"{table} {'no DP' if eps is None else f'ε={eps:g}'} query seat: Llamdex acc {out['llamdex_accuracy']:.3f} (balanced "
         f"{out['llamdex_balanced_accuracy']:.3f}); best AUC {b['auc']:.3f} [{b['auc_ci'][0]:.3f}, {b['auc_ci'][1]:.3f}] ({b['attack']}, "
         f"{b['n_members']} + {b['n_nonmembers']} records, {k} shadows; {out['seconds']:.0f} s)", t0)
    return out


def measured_with(piece: dict[str, Any] | None, preset: str, weights: str | None) -> bool:
    """Whether a cached query-seat piece went through the connector set the store serves now (`weights`, the
    digest of its tensors; None when none is stored and one will be trained) and of `preset`. A piece measured
    through other connectors (another preset, a retrained or redesigned set) is measured again rather than
    reported under these."""
    conn = (piece or {}).get("connectors") or {}
    return piece is not None and conn.get("preset") == preset and weights is not None and conn.get("weights") == weights


def _store(args: argparse.Namespace):
    from provider_party.model.connector_store import ConnectorStore

    return ConnectorStore(args.connectors)   # None: $LLAMDEX_HOME/connectors, the store `llamdex provider connectors` fills


def served_connectors(schema: Any, args: argparse.Namespace, llm: Any) -> str | None:
    """sha256 of the tensors of the connector set the store would serve for `schema`, or None if it would train one."""
    import hashlib

    store = _store(args)
    if not store.has(llm, schema):
        return None
    with open(store.path_for(llm.model_id, schema.digest) / "connectors.safetensors", "rb") as f:
        return "sha256:" + hashlib.file_digest(f, "sha256").hexdigest()


def llamdex_model(schema: Any, args: argparse.Namespace, llm: Any):
    model, trained_now = _store(args).get_or_train(llm, schema, args.preset, progress=False)
    return model, {"preset": args.preset, "trained_now": trained_now, "inject_layer": model.config.inject_layer,
                   "weights": served_connectors(schema, args, llm)}


# --- assembling the report ----------------------------------------------------------------------------


def table_data(table: str, args: argparse.Namespace) -> dict[str, Any]:
    from client_party.datasets import encode_table, load_table
    from simulations.attacks.mia import make_split

    df, schema = load_table(table)
    x, y = encode_table(df, schema)
    sz = sizes_for(len(df), args.target_size, args.challenge)
    split = make_split(len(df), sz.target, sz.members, sz.nonmembers, args.seed)
    return {"df": df, "schema": schema, "x": x, "y": y, "split": split, "sizes": sz}


def assemble(args: argparse.Namespace, cache: Cache, tables: list[str]) -> dict[str, Any]:
    """The report from whatever the cache holds (missing pieces are left out and listed in meta.missing)."""
    out: dict[str, Any] = {"meta": {}, "broken_dp": [], "tables": {}}
    missing = []
    seconds = {"provider": 0.0, "query": 0.0}
    for table in tables:
        data = table_data(table, args)
        split, sz = data["split"], data["sizes"]
        runs = []
        for eps in args.epsilons:
            prov, query = cache.load(table, eps, "provider.json"), cache.load(table, eps, "query.json")
            if prov is None:
                missing.append(f"{table} ε={eps_key(eps)} provider seat")
                continue
            seconds["provider"] += prov.get("seconds", 0.0)
            seconds["query"] += (query or {}).get("seconds", 0.0)
            run = dict(prov)
            run["best_mia"] = {"provider": _best(prov["mia"], "provider"), "query": None}
            run["llamdex_accuracy"] = run["llamdex_balanced_accuracy"] = run["expert_accuracy_query_subset"] = None
            if query is not None:
                run["mia"] = prov["mia"] + query["mia"]
                run["best_mia"]["query"] = _best(query["mia"], "query")
                for k in ("llamdex_accuracy", "llamdex_balanced_accuracy", "expert_accuracy_query_subset"):
                    run[k] = query[k]
                run["query_shadows"] = query["shadows"]
            elif eps_key(eps) in {eps_key(e) for e in args.query_epsilons}:
                missing.append(f"{table} ε={eps_key(eps)} query seat")
            runs.append(run)
        q_any = next((cache.load(table, e, "query.json") for e in args.epsilons if cache.load(table, e, "query.json")), None)
        out["tables"][table] = {
            "setup": {"records": len(data["df"]), "training set": len(split.train),
                      "members / non-members attacked (provider seat)": f"{sz.members} / {sz.nonmembers}",
                      "auxiliary population": len(split.aux), "shadows": args.shadows,
                      "query seat": (f"ε in {{{', '.join(eps_key(e) for e in args.query_epsilons)}}}; {min(args.query_records, sz.members)} + "
                                     f"{min(args.query_records, sz.nonmembers)} records; {args.query_shadows} shadows")
                      if q_any else "not run yet",
                      "canaries": f"{args.canaries} × {args.canary_seeds} seeds (gradient and input space)",
                      "sensitive column": ", ".join(data["schema"].sensitive_columns) or "–"},
            "connectors": q_any["connectors"] if q_any else None,
            "overfit_anchor": cache.load(table, None, "anchor.json"),
            "runs": runs,
        }
        b = cache.load(table, args.broken_epsilon, "broken_dp.json")
        if b:
            out["broken_dp"].extend(b)
        elif args.broken_seeds:
            missing.append(f"{table} broken DP-SGD check")
    out["meta"]["missing"] = missing
    out["meta"]["compute_minutes"] = {k: round(v / 60, 1) for k, v in seconds.items()}
    return out


def summary_notes(data: dict[str, Any], args: argparse.Namespace) -> list[str]:
    notes = [
        "Intervals are 95 %: AUC by a percentile bootstrap over records (members and non-members resampled separately), TPR at "
        "1 % FPR exact (Clopper–Pearson). An attack is said to beat chance only when its interval excludes chance; for the best "
        "of several attacks the family-wise interval (Bonferroni over the attacks of the seat) is the one read.",
        "The canary column is the white-box one-run audit (gradient canaries: Dirac canaries inserted into the clipped per-sample "
        "gradients of the client's own DP-SGD, the noisy sums observed), max over seeds, 95 % per seed; the input-space (black-box) "
        "audit is given beside it. A bound above the claimed ε would reveal a bug in DP training or in the audit.",
        "The query seat sees the customized LLM's answer probabilities over the verbalizer tokens; the connectors were trained on "
        "synthetic rows only, so anything it detects leaked through the expert.",
    ]
    q = sorted({eps_key(e) for e in args.query_epsilons}, key=lambda s: math.inf if s == "none" else float(s))
    all_eps = [eps_key(e) for e in args.epsilons]
    if set(q) != set(all_eps):
        notes.append(f"Cut to fit 3 hours on 2 cores: the query seat runs at ε ∈ {{{', '.join(q)}}} only (a table's up to 1,200 questions "
                     "run through the LLM once, then each ε puts 17 experts behind them over the slot positions and bootstraps every "
                     "interval: on titanic, alone on 2 cores, 2.4 minutes for the questions and 1.4 per ε); its intervals are not cut.")
    return notes


def write(args: argparse.Namespace, cache: Cache, tables: list[str], argv: list[str] | None, t0: float) -> dict[str, Any]:
    from simulations.attacks.report import write_all

    data = assemble(args, cache, tables)
    cmd = "python -m simulations.benchmarks.privacy_utility" + ("" if not argv else " " + " ".join(argv))
    data["meta"].update({
        "command": cmd, "wall_minutes": round((time.perf_counter() - t0) / 60, 1),
        "machine": f"{os.cpu_count()} CPU cores, {platform.machine()}, Python {platform.python_version()}",
        "date": time.strftime("%Y-%m-%d"), "seed": args.seed,
        "summary": ("Each table: one client training set (up to 1,000 records), trained with the client's own recipe (`TrainConfig()` "
                    "without DP, with early stopping; `TrainConfig.private(ε)` with DP-SGD, δ = 1/(10 n), balanced decision rule). The "
                    "attacker's shadow experts use the same recipe; each challenge record is in half of them, the rest of their training "
                    "sets comes from an auxiliary population disjoint from the target's training set."),
        "notes": summary_notes(data, args),
    })
    write_all(data, args.out)
    return data


def _registered_tables(text: str) -> str:
    """Registered table names only: the benchmark's splits and shadows are sized for them (a file is `llamdex attack`'s)."""
    from client_party.datasets import DATASETS

    names = [t.strip() for t in text.split(",") if t.strip()]
    bad = [t for t in names if t not in DATASETS]
    if not names or bad:
        raise argparse.ArgumentTypeError(f"{', '.join(bad) or repr(text)}: name registered tables ({', '.join(sorted(DATASETS))}); "
                                         "for a table file, use `llamdex attack mia|attribute|canary --data FILE`")
    return text


def _seats(text: str) -> str:
    seats = [t.strip() for t in text.split(",") if t.strip()]
    if not seats or set(seats) - {"provider", "query"}:
        raise argparse.ArgumentTypeError(f"expected provider, query or provider,query, got {text!r}")
    return text


def parser() -> argparse.ArgumentParser:
    from simulations.cli.common import add_alias, add_connectors_arg, canary_count, epsilon_list, non_negative_int, positive_float, positive_int

    p = argparse.ArgumentParser(prog="python -m simulations.benchmarks.privacy_utility", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", dest="tables", type=_registered_tables, default=",".join(DEFAULT_TABLES), help="comma-separated registered tables (default: %(default)s)")
    add_alias(p, "--tables", "--data", dest="tables")
    p.add_argument("--epsilons", type=epsilon_list, default=epsilon_list(DEFAULT_EPSILONS), help="target ε list, 'none' = no DP (default: %(default)s)")
    p.add_argument("--seats", type=_seats, default="provider,query", help="provider, query or provider,query (default: %(default)s)")
    p.add_argument("--target-size", type=positive_int, default=1000, help="client training-set size, smaller for small tables (default: %(default)s)")
    p.add_argument("--challenge", type=positive_int, default=500, help="members and non-members attacked, each (default: %(default)s)")
    p.add_argument("--shadows", type=non_negative_int, default=16, help="shadow experts (default: %(default)s)")
    p.add_argument("--population", type=positive_int, default=500, help="population records z for RMIA, provider seat (default: %(default)s)")
    p.add_argument("--query-epsilons", type=epsilon_list, default=epsilon_list("1,none"),
                   help="ε values attacked from the query seat (default: 1,none; on 2 cores titanic's questions take 2.4 "
                        "minutes through the LLM once, then each ε 1.4)")
    p.add_argument("--query-records", type=positive_int, default=500, help="members and non-members each attacked through the LLM (default: %(default)s)")
    p.add_argument("--query-population", type=positive_int, default=200, help="population records z for RMIA through the LLM (default: %(default)s)")
    p.add_argument("--query-shadows", type=positive_int, default=16, help="shadows pushed through the LLM (default: %(default)s)")
    p.add_argument("--canaries", type=canary_count, default=1000, help="canaries per one-run audit (default: %(default)s)")
    p.add_argument("--canary-seeds", type=positive_int, default=3, help="independent audit runs per ε and kind (default: %(default)s)")
    p.add_argument("--broken-epsilon", type=positive_float, default=1.0, help="claimed ε of the broken-DP-SGD check (default: %(default)s)")
    p.add_argument("--broken-seeds", type=non_negative_int, default=3, help="seeds of the broken-DP-SGD check per table (default: %(default)s)")
    p.add_argument("--preset", default="default", choices=("default", "quick"), help="connector preset (default: %(default)s)")
    add_connectors_arg(p, help="connector store (default: $LLAMDEX_HOME/connectors); missing connectors are trained into it",
                       aliases=("--connector-root",))
    p.add_argument("--no-anchor", dest="anchor", action="store_false", help="skip the overfit sanity anchor")
    p.add_argument("--render-only", action="store_true", help="run nothing: rebuild the report from the cache")
    p.add_argument("--seed", type=int, default=0, help="seed of the member/non-member split, the shadows and the attacks (default 0)")
    p.add_argument("--threads", type=positive_int, default=None,
                   help="torch threads of the LLM passes (default: 2, or 1 on a 1-core machine); the experts train on one")
    p.add_argument("--cache", type=Path, default=CACHE_DIR, help="cache of finished pieces and trained experts, one subfolder per client recipe (default: %(default)s)")
    p.add_argument("--out", type=Path, default=RESULTS_DIR, help="output folder (default: docs/results)")
    return p


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = parser()
    args = p.parse_args(argv)
    args.seats = [s.strip() for s in args.seats.split(",") if s.strip()]   # checked by the flag's type (_seats)
    return args


def main(argv: list[str] | None = None) -> int:
    import torch

    args = parse_args(argv)
    t0 = time.perf_counter()
    tables = [t.strip() for t in args.tables.split(",") if t.strip()]
    cache = Cache(args.cache, target=args.target_size, challenge=args.challenge, seed=args.seed, settings=piece_settings(args))
    if not args.render_only:
        torch.set_num_threads(args.threads or max(1, min(2, os.cpu_count() or 1)))   # the LLM passes; experts switch to one
        llm = None
        for table in tables:
            data = table_data(table, args)
            sz = data["sizes"]
            _log(f"{table}: {len(data['df'])} records; {len(data['split'].train)} train / {len(data['split'].out)} held-out / "
                 f"{len(data['split'].aux)} auxiliary; {sz.members} + {sz.nonmembers} attacked", t0)
            if "provider" in args.seats:
                for eps in args.epsilons:
                    provider_seat(table, eps, data, args, cache, t0)
                if args.broken_seeds:
                    broken_dp(table, data, args, cache, t0)
                if args.anchor:
                    a = overfit_anchor(table, args, cache)
                    _log(f"{table}: overfit anchor best AUC {a['best']['auc']:.3f} {a['best']['auc_ci']} ({a['best']['attack']}); "
                         f"typical records {a['typical_share']:.0%}", t0)
            if "query" in args.seats:
                if llm is None:
                    from provider_party.model.base_llm import load_base_llm

                    llm = load_base_llm()
                    _log(f"base LLM loaded: {llm.model_id}", t0)
                for eps in args.query_epsilons:
                    query_seat(table, eps, data, args, cache, llm, t0)
            write(args, cache, tables, argv, t0)
    data = write(args, cache, tables, argv, t0)
    _log(f"done: {args.out}/attacks.json, attacks.md, roc_*.png, tradeoff.png; missing: {data['meta']['missing'] or 'nothing'}", t0)
    return 0


if __name__ == "__main__":
    sys.exit(main())
