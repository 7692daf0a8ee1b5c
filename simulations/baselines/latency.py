"""Query latency of every method next to the base LLM's, one question at a time, calls alternated.

Each repetition draws one real held-out question and asks it of every method in turn, the order
rotating from one repetition to the next so that drift on a shared machine hits all of them; the
medians and each method's ratio to the base LLM's median come from the same repetitions. What is
timed is one whole query: the base LLM's and a LoRA'd model's forward pass (LoRA adapters unmerged,
as a multi-adapter server runs them), Llamdex's one pass with the expert, the expert API's
constrained form generation plus the expert, and the in-context prompt with its demonstrations
(no prefix reuse).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from provider_party.model.frozen_lm import FrozenLM
from provider_party.model.prompting import PromptBuilder
from simulations.baselines.expert_api import ExpertAPI
from simulations.baselines.lora import LoRAClassifier, lora_copy


def measure(calls: dict[str, Callable[[str], Any]], questions: list[str], reps: int, seed: int = 0) -> dict[str, list[float]]:
    """Seconds per call for each named callable, over `reps` questions drawn from `questions`."""
    rng = np.random.default_rng(seed)
    names = list(calls)
    times: dict[str, list[float]] = {n: [] for n in names}
    with torch.inference_mode():
        for n in names:  # warm-up
            calls[n](questions[0])
        for r in range(reps):
            q = questions[int(rng.integers(len(questions)))]
            for n in names[r % len(names):] + names[:r % len(names)]:
                t = time.perf_counter()
                calls[n](q)
                times[n].append(time.perf_counter() - t)
    return times


def latency_rows(bench, table: str, epsilon: float, seed: int, methods: list[str], reps: int, llamdex_model=None) -> list[dict]:
    """Cost rows (method, median and p90 seconds, ratio to the base LLM, tokens) for one table."""
    s = bench.split(table, seed)
    base = bench.base
    prompts = PromptBuilder(base.tokenizer, s.schema)
    lm = FrozenLM(base)
    expert = bench.expert(table, epsilon, seed).model
    calls: dict[str, Callable[[str], Any]] = {"base_llm": lambda q: lm.full(prompts.batch([q], 0).to(base.device), prompts.verbalizer_ids)}
    tokens: dict[str, dict[str, float]] = {"base_llm": {"mean_prompt_tokens": float(np.mean([len(prompts.batch([q], 0).input_ids[0]) for q in s.questions]))}}
    if "llamdex" in methods and llamdex_model is not None:
        calls["llamdex"] = lambda q: llamdex_model.answer([q], expert)
        tokens["llamdex"] = {"mean_prompt_tokens": float(np.mean([llamdex_model.batch([q]).input_ids.shape[1] for q in s.questions]))}
    if "expert_api" in methods:
        api = ExpertAPI(base, s.schema)
        calls["expert_api"] = lambda q: api.answer([q], expert, batch_size=1)
        ext = api.extract(s.questions[: min(32, len(s.questions))], batch_size=bench.settings.api_batch)
        tokens["expert_api"] = {"mean_prompt_tokens": float(np.mean(ext.prompt_tokens)), "mean_generated_tokens": float(np.mean(ext.generated_tokens)),
                                "mean_forced_tokens": float(np.mean(ext.forced_tokens))}
    if "icl_dp" in methods:
        prompter, _ = bench.icl_prompter(table, epsilon, seed)
        calls["icl_dp"] = prompter.answer_uncached
        tokens["icl_dp"] = {"mean_prompt_tokens": float(np.mean([prompter.prompt_tokens(q) for q in s.questions])), "k": prompter.k}
    if any(m.startswith("lora") for m in methods):
        # Latency does not depend on the adapter's values: a fresh adapter of the same shape is timed.
        clf = LoRAClassifier(lora_copy(base, bench.settings.lora, seed), s.schema)
        calls["lora"] = lambda q: clf.probs([q], 1)
        tokens["lora"] = dict(tokens["base_llm"])
    times = measure(calls, s.questions, reps, seed)
    base_median = float(np.median(times["base_llm"]))
    rows = []
    for name, ts in times.items():
        rows.append({"dataset": s.name, "method": name, "epsilon": epsilon, "seed": seed, "batch_size": 1, "reps": len(ts),
                     "median_s": float(np.median(ts)), "p90_s": float(np.percentile(ts, 90)), "median_base_s": base_median,
                     "ratio_to_base": float(np.median(ts)) / base_median, **tokens[name]})
    return rows
