"""One function per compared method: each trains what it needs and scores the same real held-out questions.

`Workbench` holds what the methods share: the base LLM (loaded once, never modified), the table
splits and their held-out questions (made exactly as `simulations.pipeline.run_pipeline` makes
them, so every method, Llamdex included, answers the same questions), the client's DP experts
(`TrainConfig.private(ε)`, as the pipeline trains them) and the synthetic tables, which are kept
in a work folder so an interrupted comparison and the methods that share a table (LoRA and
in-context prompting both read MST's) reuse them. Real records are never written there: only
DP-synthesized tables and their privacy statements.

Every method returns a `MethodResult`: rows in the format of `docs/results/accuracy.json` and
what it cost (wall times, tokens), plus what the report shows (privacy statements, extraction
errors, training losses).
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from client_party.datasets import TableRef, encode_table
from client_party.expert_training import TrainConfig, TrainedExpert, train_expert
from protocol.dp import DPStatement
from protocol.encoding import FeatureEncoder
from protocol.schema import PublicSchema
from protocol.verbalizer import Verbalizer
from provider_party.model.base_llm import BaseLLM
from simulations.baselines.dp_gan import DPGAN, GANConfig
from simulations.baselines.expert_api import ExpertAPI, Extraction
from simulations.baselines.icl import ICLPrompter, choose_demonstrations
from simulations.baselines.lora import LoRAConfig, LowerStates, lower_states, train_lora
from simulations.baselines.mst import MST, MSTConfig
from simulations.evaluation import extraction_quality, scores
from simulations.pipeline import held_out_split

SYNTH_QUESTION_SEED = 20_000   # verbalizer seed of training questions (held-out questions use 10_000 + seed)
ICL_QUESTION_SEED = 30_000
EXTRACTION_FORMAT = "llamdex.expert-api-extraction/v1"   # the stored form filling (Workbench.extraction)
SYNTHESIZERS = {"lora_dp_mst": "mst", "lora_dp_gan": "dp_gan"}


@dataclass(frozen=True)
class MethodSettings:
    """The sizes every method runs with (a preset of the comparison)."""

    max_test: int | None = 300
    max_train: int | None = None
    eval_batch: int = 16
    mst: MSTConfig = field(default_factory=MSTConfig)
    gan: GANConfig = field(default_factory=GANConfig)
    lora: LoRAConfig = field(default_factory=LoRAConfig)
    icl_k: int = 4
    api_batch: int = 16


@dataclass
class TableSplit:
    """One table and seed: the client's training split and the real held-out records as questions."""

    name: str
    schema: PublicSchema
    seed: int
    train: pd.DataFrame
    test: pd.DataFrame
    questions: list[str]
    y_test: np.ndarray


@dataclass
class MethodResult:
    rows: list[dict[str, Any]]
    costs: dict[str, Any] = field(default_factory=dict)
    info: dict[str, Any] = field(default_factory=dict)


def balanced_decision(probs: np.ndarray, train_share: np.ndarray) -> np.ndarray:
    """The balanced-accuracy decision of a model fitted by cross-entropy to labels with these counts: argmax of
    p(y | x) / prior(y) (add-one prior). The prior is the model's own training labels (synthetic, or the real
    questions for the upper bound), so it costs no privacy beyond the model's. What the client's expert does
    with its `balanced` rule, given to the fine-tuned baselines too, so that balanced accuracy compares rules alike."""
    prior = (np.asarray(train_share, dtype=float) + 1.0) / (float(np.sum(train_share)) + len(train_share))
    return (np.log(np.clip(probs, 1e-12, None)) - np.log(prior)).argmax(-1)


def row(dataset: str, method: str, epsilon: float | None, y_true: np.ndarray, pred: np.ndarray, seed: int, **extra) -> dict[str, Any]:
    return {"dataset": dataset, "method": method, "epsilon": epsilon, **scores(y_true, pred), "n_test": len(y_true), "seed": seed, **extra}


class Workbench:
    """Shared state of one comparison run (see the module docstring)."""

    def __init__(self, base: BaseLLM, settings: MethodSettings, work_dir: Path, progress: bool = True, log=print):
        self.base, self.settings, self.work_dir = base, settings, Path(work_dir)
        self.progress, self.log = progress, log
        self._splits: dict[tuple[str, int], TableSplit] = {}
        self._experts: dict[tuple[str, float, int], TrainedExpert] = {}
        self._extractions: dict[tuple[str, int], tuple[Extraction, float]] = {}
        self._lower: dict[tuple[str, int, int], LowerStates] = {}

    # --- shared inputs -------------------------------------------------------------------------

    def split(self, table: str, seed: int) -> TableSplit:
        key = (table, seed)
        if key not in self._splits:
            ref = TableRef.parse(table)
            df, schema = ref.load()
            train, test = held_out_split(df, schema, seed=seed, max_train=self.settings.max_train, max_test=self.settings.max_test)
            questions = Verbalizer(schema, seed=10_000 + seed).questions(test[schema.feature_names].to_dict("records"))
            y = FeatureEncoder(schema).label_index(test[schema.label.name])
            self._splits[key] = TableSplit(ref.id, schema, seed, train, test, questions, y)
        return self._splits[key]

    def expert(self, table: str, epsilon: float, seed: int) -> TrainedExpert:
        """The client's DP expert at ε, trained as the pipeline trains it; the provider's copy is rebuilt from spec + tensors."""
        key = (table, float(epsilon), seed)
        if key not in self._experts:
            s = self.split(table, seed)
            trained = train_expert(*encode_table(s.train, s.schema), s.schema, TrainConfig.private(epsilon, seed=seed))
            rebuilt = trained.as_received()
            self._experts[key] = TrainedExpert(rebuilt, trained.dp, trained.history)
        return self._experts[key]

    def delta(self, table: str, epsilon: float, seed: int) -> float:
        """The synthesizers' δ: the expert's (1/(10 n) for n training records)."""
        return self.expert(table, epsilon, seed).dp.delta

    def synthetic(self, table: str, synthesizer: str, epsilon: float, seed: int, n_rows: int) -> tuple[pd.DataFrame, dict, float]:
        """(synthetic table, privacy statement, seconds it took or 0 if reused) from the work folder or made now."""
        s = self.split(table, seed)
        stem = self.work_dir / "synthetic" / f"{s.name}-{synthesizer}-eps{epsilon:g}-seed{seed}-n{n_rows}"
        data, meta = stem.with_suffix(".parquet"), stem.with_suffix(".json")
        if data.exists() and meta.exists():
            info = json.loads(meta.read_text())
            if info.get("settings") == self._synth_settings(synthesizer):
                return pd.read_parquet(data), info["statement"], 0.0
        delta = self.delta(table, epsilon, seed)
        t = time.perf_counter()
        if synthesizer == "mst":
            res = MST(s.schema, self.settings.mst).fit_sample(s.train, epsilon, delta, n_rows=n_rows, seed=seed)
        elif synthesizer == "dp_gan":
            res = DPGAN(s.schema, self.settings.gan).fit_sample(s.train, epsilon, delta, n_rows=n_rows, seed=seed, progress=self.progress)
        else:
            raise ValueError(f"unknown synthesizer {synthesizer!r}; use 'mst' or 'dp_gan'")
        took = time.perf_counter() - t
        stem.parent.mkdir(parents=True, exist_ok=True)
        res.table.to_parquet(data)
        meta.write_text(json.dumps({"settings": self._synth_settings(synthesizer), "statement": res.statement.to_dict(), "seconds": took}, indent=1))
        self.log(f"[{s.name}] {synthesizer} at ε={epsilon:g} (δ={delta:.2e}): achieved ε={res.statement.epsilon:.4f}, {len(res.table)} rows, {took:.0f} s")
        return res.table, res.statement.to_dict(), took

    def _synth_settings(self, synthesizer: str) -> dict:
        return asdict(self.settings.mst if synthesizer == "mst" else self.settings.gan)

    # --- methods -------------------------------------------------------------------------------

    def lora_on(self, table: str, method: str, rows: pd.DataFrame, epsilon: float | None, seed: int) -> MethodResult:
        s = self.split(table, seed)
        cfg = self.settings.lora
        questions = Verbalizer(s.schema, seed=SYNTH_QUESTION_SEED + seed).questions(rows[s.schema.feature_names].to_dict("records"))
        labels = FeatureEncoder(s.schema).label_index(rows[s.schema.label.name])
        t = time.perf_counter()
        clf = train_lora(self.base, s.schema, questions, labels, cfg, seed=seed, progress=self.progress)
        fit_s = time.perf_counter() - t
        t = time.perf_counter()
        probs = clf.probs(s.questions, self.settings.eval_batch, lower=self.held_out_lower(table, seed, clf.first_layer),
                          progress=self.progress)
        eval_s = time.perf_counter() - t
        del clf
        share = np.bincount(labels, minlength=s.schema.label.num_classes)
        return MethodResult([row(s.name, method, epsilon, s.y_test, probs.argmax(-1), seed),
                             row(s.name, f"{method}_balanced", epsilon, s.y_test, balanced_decision(probs, share), seed)],
                            {"finetune_s": fit_s, "eval_s": eval_s, "train_questions": len(questions)},
                            {"train_label_share": share.tolist()})

    def held_out_lower(self, table: str, seed: int, layer: int) -> LowerStates | None:
        """The base LLM's states of the held-out questions below the adapters: the same for every LoRA run (computed once)."""
        if layer == 0:
            return None
        key = (table, seed, layer)
        if key not in self._lower:
            s = self.split(table, seed)
            self._lower = {key: lower_states(self.base, s.schema, s.questions, layer, self.settings.eval_batch, self.progress)}
        return self._lower[key]

    def lora_dp(self, table: str, method: str, epsilon: float, seed: int) -> MethodResult:
        synth, statement, synth_s = self.synthetic(table, SYNTHESIZERS[method], epsilon, seed, self.settings.lora.questions)
        res = self.lora_on(table, method, synth, epsilon, seed)
        res.costs["synthesis_s"] = synth_s
        res.info["privacy"] = statement
        return res

    def lora_real(self, table: str, seed: int) -> MethodResult:
        """The no-privacy upper bound: the same fine-tuning budget on real training records."""
        s = self.split(table, seed)
        n = min(self.settings.lora.questions, len(s.train))
        rows = s.train.sample(n=n, random_state=seed)
        return self.lora_on(table, "lora_real", rows, None, seed)

    def icl_prompter(self, table: str, epsilon: float, seed: int) -> tuple[ICLPrompter, dict]:
        s = self.split(table, seed)
        synth, statement, _ = self.synthetic(table, "mst", epsilon, seed, self.settings.lora.questions)
        demos = choose_demonstrations(synth, s.schema, self.settings.icl_k, seed)
        return ICLPrompter(self.base, s.schema, demos, seed=ICL_QUESTION_SEED + seed), statement

    def icl(self, table: str, epsilon: float, seed: int) -> MethodResult:
        s = self.split(table, seed)
        prompter, statement = self.icl_prompter(table, epsilon, seed)
        t = time.perf_counter()
        pred = prompter.probs(s.questions, self.settings.eval_batch, progress=self.progress).argmax(-1)
        eval_s = time.perf_counter() - t
        tokens = [prompter.prompt_tokens(q) for q in s.questions]
        return MethodResult([row(s.name, "icl_dp", epsilon, s.y_test, pred, seed)],
                            {"eval_s": eval_s, "k": prompter.k, "mean_prompt_tokens": float(np.mean(tokens))},
                            {"privacy": statement, "synthesizer": "mst"})

    def extraction(self, table: str, seed: int) -> tuple[Extraction, float]:
        """The expert API's form filling of the held-out questions and the seconds it took.

        It does not depend on ε (only the expert behind the API does), so it runs once per (table, seed)
        and is kept in the work folder: an ε added later, or a run resumed after a stop, reuses it. The
        file is keyed by everything the generation reads (base LLM, instruction, questions, batch), so a
        change of any of them makes it anew."""
        key = (table, seed)
        if key not in self._extractions:
            s = self.split(table, seed)
            api = ExpertAPI(self.base, s.schema)
            digest = hashlib.sha256(json.dumps([EXTRACTION_FORMAT, self.base.model_id, api.instruction, self.settings.api_batch,
                                                s.questions]).encode()).hexdigest()[:16]
            path = self.work_dir / "extraction" / f"{s.name}-seed{seed}-{digest}.json"
            if path.exists():
                stored = json.loads(path.read_text())
                ext, took = Extraction(**stored["extraction"]), stored["seconds"]
            else:
                t = time.perf_counter()
                ext = api.extract(s.questions, self.settings.api_batch, progress=self.progress)
                took = time.perf_counter() - t
                path.parent.mkdir(parents=True, exist_ok=True)
                tmp = path.with_suffix(".tmp")
                tmp.write_text(json.dumps({"format": EXTRACTION_FORMAT, "seconds": took, "extraction": asdict(ext)}))
                tmp.replace(path)  # a stop mid-write leaves no half file
            self._extractions = {key: (ext, took)}  # one table at a time
        return self._extractions[key]

    def expert_api(self, table: str, epsilon: float, seed: int) -> MethodResult:
        s = self.split(table, seed)
        ext, took = self.extraction(table, seed)
        api = ExpertAPI(self.base, s.schema)
        x = api.features(ext.records)
        expert = self.expert(table, epsilon, seed).model  # trained here if not yet (outside inference mode)
        with torch.inference_mode():
            pred = expert(torch.as_tensor(x)).argmax(-1).numpy()
        fe = FeatureEncoder(s.schema)
        quality = extraction_quality(fe, fe.encode_frame(s.test), x)
        unparsed = {c.name: float(np.mean([not ok[c.name] for ok in ext.parsed])) for c in s.schema.columns}
        return MethodResult([row(s.name, "expert_api", epsilon, s.y_test, pred, seed)],
                            {"extract_s": took, "mean_prompt_tokens": float(np.mean(ext.prompt_tokens)),
                             "mean_generated_tokens": float(np.mean(ext.generated_tokens)), "mean_forced_tokens": float(np.mean(ext.forced_tokens))},
                            {"extraction": quality, "unparsed_share": unparsed})

    def llamdex(self, table: str, epsilons: tuple[float, ...], seed: int, connector_preset: str, connectors_root,
                decision: str = "balanced") -> MethodResult:
        """Llamdex, its experts, the base LLM and the majority class, from `run_pipeline` with this comparison's split.

        decision "calibrated": the client trains its experts for plain accuracy instead (the rule the fine-tuned
        baselines follow); the rows are `llamdex_calibrated` and `expert_calibrated`, and these experts are not
        the ones the expert API uses."""
        from simulations.pipeline import eps_key, run_pipeline

        ref = TableRef.parse(table)
        if ref.name is None:
            raise ValueError(f"--methods llamdex needs a registered table (run_pipeline loads it by name); {table!r} is a file")
        t = time.perf_counter()
        res = run_pipeline(ref.name, tuple(epsilons), preset=connector_preset, seed=seed, max_test=self.settings.max_test,
                           max_train=self.settings.max_train, connectors_root=connectors_root, progress=self.progress, log=self.log,
                           decision=decision)
        s = self.split(table, seed)
        if res.questions != s.questions:
            raise AssertionError(f"{table}: run_pipeline asked other held-out questions than the baselines; the comparison would be unfair")
        rows = res.rows
        if decision == "balanced":
            for eps in epsilons:  # the pipeline's experts are the ones the baselines need: trained once
                key = eps_key(eps)
                self._experts.setdefault((table, float(eps), seed), TrainedExpert(res.experts[key], DPStatement.from_dict(res.dp[key]), []))
        else:
            renamed = {"llamdex": f"llamdex_{decision}", "expert": f"expert_{decision}"}
            rows = [{**r, "method": renamed[r["method"]]} for r in rows if r["method"] in renamed]
        return MethodResult(rows, {"wall_s": time.perf_counter() - t, **res.timings, "connectors_trained_now": res.connectors_trained_now},
                            {"extraction": res.extraction, "dp": res.dp, "model": res.model, "experts": res.experts})
