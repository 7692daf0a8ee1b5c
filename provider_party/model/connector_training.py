"""Trains the connectors for one (base LLM, schema) pair from synthetic data only, in stages, and checks them.

`train_connectors` runs: synthetic rows, the surrogate expert and their questions
(`training_data`); one frozen pass per question, shared by both stages (layer-`j` states for the
encoder; for the decoder's questions the pass runs on to the last layer and keeps what the slot
passes need); the expert encoder (`encoder_training`); the self-check: per-column extraction on
synthetic validation questions against thresholds, and, for a schema whose encoder misses one,
more questions for the weak columns and more training, with whatever still misses reported in
the metrics (`metrics["self_check"]`) rather than served silently; then one decoder per
candidate inject layer `k`, keeping the best on validation questions (`decoder_training`).

The number of questions follows the schema: every question trains every column once, but a
question's cost grows with its length, so the encoder's question count shrinks as the column
count grows (`Preset.questions_for`). Nothing here reads the client's data or expert, and nothing
touches torch's global random state: every draw comes from a generator seeded by `seed`.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

import torch

from protocol.encoding import FeatureEncoder
from protocol.schema import PublicSchema
from protocol.seeding import generator, init_parameters
from provider_party.model.base_llm import BaseLLM
from provider_party.model.connectors import (
    ConnectorConfig,
    ExpertDecoder,
    ExpertEncoder,
    build_connectors,
)
from provider_party.model.decoder_training import evaluate_decoder, train_decoder
from provider_party.model.encoder_training import (
    Thresholds,
    describe_shortfalls,
    extraction_report,
    shortfalls,
    thresholds_dict,
    train_encoder,
)
from provider_party.model.filler_words import filler_vocabulary
from provider_party.model.llamdex_model import LlamdexModel
from provider_party.model.training_data import (
    DecoderBatch,
    EncoderBatch,
    SyntheticCorpus,
    build_corpus,
    cache_questions,
)

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Preset:
    """Sizes of one connector-training run; `default` fits 15 minutes for a 30-column schema on 2 CPU cores.

    `encoder_questions` is the encoder's question count for a schema of up to `full_columns`
    columns; wider schemas get `encoder_questions * full_columns / columns` (never fewer than
    `min_encoder_questions`): their questions are longer, and each still trains every column.
    The decoder's questions count toward the encoder's (one frozen pass serves both).
    """

    name: str
    n_synthetic: int = 10_000
    encoder_questions: int = 1200
    decoder_questions: int = 320
    val_questions: int = 128
    encoder_epochs: int = 8
    decoder_epochs: int = 6            # 2 left 4 % of near-tie expert outputs flipped on titanic (measured: 10 → 3 of 262)
    encoder_layer: int = 12
    inject_candidates: tuple[int, ...] = (20, 24)
    num_tokens: int = 4
    batch_size: int = 16               # questions per frozen pass
    encoder_batch: int = 8             # questions per encoder step
    encoder_min_steps: int = 400       # the encoder ties values to fields only after enough steps (measured)
    encoder_lr: float = 2e-3
    decoder_lr: float = 1e-3
    surrogate_epochs: int = 10
    full_columns: int = 12
    min_encoder_questions: int = 400
    retrain_rounds: int = 1            # self-check: rounds of extra questions for the weak columns
    retrain_questions: float = 0.5     # ... as a share of the encoder's questions
    retrain_epochs: int = 4
    check_categorical: float = 0.97    # self-check thresholds on synthetic validation questions
    check_numeric: float = 0.97
    check_missing: float = 0.97
    filler_rate: float = 0.0           # share of named fields whose connective is replaced by filler words (0: off; measured
                                       # not to help wordings never seen in training, docs/DESIGN_NOTES.md)
    filler_vocabulary: int = 1000      # ... drawn from this many of the tokenizer's most common words

    def questions_for(self, schema: PublicSchema) -> tuple[int, int]:
        """(encoder-only questions, decoder questions) for this schema; together they are the encoder's."""
        total = self.encoder_questions
        if len(schema.columns) > self.full_columns:
            total = max(round(total * self.full_columns / len(schema.columns)), min(self.min_encoder_questions, total))
        dec = min(self.decoder_questions, total)
        return total - dec, dec

    @property
    def thresholds(self) -> Thresholds:
        return Thresholds(self.check_categorical, self.check_numeric, self.check_missing)

    @classmethod
    def from_fields(cls, fields_: dict[str, Any]) -> "Preset":
        """A preset written by a person (a config table, a run-config JSON object): each field of its type and range, so a
        typo fails here with the field named instead of as a TypeError deep inside connector training; raises ValueError."""
        known = {f.name: f for f in dataclasses.fields(cls)}
        if "name" not in fields_:
            raise ValueError("a preset needs a 'name'")
        out: dict[str, Any] = {}
        for key, value in fields_.items():
            if key not in known:
                raise ValueError(f"unknown field {key!r}; the fields are {sorted(known)}")
            out[key] = _preset_field(key, value, getattr(cls, key, None))
        return cls(**out)


_AT_LEAST_ZERO = {"decoder_questions", "encoder_layer", "encoder_min_steps", "retrain_rounds"}
_SHARES = {"check_categorical", "check_numeric", "check_missing", "filler_rate"}


def _preset_field(key: str, value: Any, default: Any) -> Any:
    """One preset field checked against its default's type: whole numbers (at least 1, or 0 where that means none),
    finite positive rates, shares in [0, 1], a non-empty list of layers."""
    if key == "name":
        if not isinstance(value, str) or not value.strip():
            raise ValueError(f"'name' must be a non-empty string, got {value!r}")
        return value
    if key == "inject_candidates":
        if not isinstance(value, (list, tuple)) or not value or not all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in value):
            raise ValueError(f"'inject_candidates' must be a non-empty list of layer numbers, got {value!r}")
        return tuple(value)
    if isinstance(default, int):
        least = 0 if key in _AT_LEAST_ZERO else 1
        if not isinstance(value, int) or isinstance(value, bool) or value < least:
            raise ValueError(f"{key!r} must be a whole number of at least {least}, got {value!r}")
        return value
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value):
        raise ValueError(f"{key!r} must be a finite number, got {value!r}")
    if key in _SHARES and not 0 <= value <= 1:
        raise ValueError(f"{key!r} must be between 0 and 1, got {value!r}")
    if key not in _SHARES and value <= 0:
        raise ValueError(f"{key!r} must be above 0, got {value!r}")
    return float(value)


PRESETS: dict[str, Preset] = {
    "default": Preset("default"),
    "quick": Preset("quick", n_synthetic=4000, encoder_questions=480, decoder_questions=128, val_questions=64, min_encoder_questions=240,
                    encoder_epochs=8, inject_candidates=(24,), surrogate_epochs=5),   # decoder_epochs 6 as the default's (scripts/decoder_epochs.py)
}


@dataclass
class TrainedConnectors:
    config: ConnectorConfig
    encoder: ExpertEncoder
    decoder: ExpertDecoder
    surrogate: torch.nn.Module
    metrics: dict = field(default_factory=dict)


Progress = Callable[[str, float], None]


def _config_for(base: BaseLLM, schema: PublicSchema, p: Preset) -> tuple[ConnectorConfig, tuple[int, ...]]:
    candidates = tuple(k for k in p.inject_candidates if p.encoder_layer <= k < base.num_layers) or (base.num_layers - 2,)
    config = ConnectorConfig(base_model_id=base.model_id, schema_digest=schema.digest, hidden_size=base.hidden_size,
                             num_layers=base.num_layers, num_tokens=p.num_tokens, encoder_layer=p.encoder_layer, inject_layer=candidates[0])
    return config, candidates


@dataclass
class FrozenStates:
    """Everything the stages read from the frozen LLM, computed once per question."""

    encoder: list[EncoderBatch]
    encoder_val: list[EncoderBatch]
    decoder: list[DecoderBatch]
    decoder_val: list[DecoderBatch]


def _frozen_pass(probe: LlamdexModel, corpus: SyntheticCorpus, candidates: tuple[int, ...], p: Preset, progress: bool, report: Progress,
                 timings: dict[str, float]) -> FrozenStates:
    t0 = time.perf_counter()
    ks = list(candidates)
    dec, dec_ctx = cache_questions(probe, corpus, corpus.decoder_idx, p.batch_size, candidates=ks, desc="frozen pass (both stages)",
                                   progress=progress, on_batch=lambda f: report("frozen pass", 0.3 * f))
    dec_val, dec_val_ctx = cache_questions(probe, corpus, corpus.decoder_val_idx, p.batch_size, candidates=ks, desc="frozen pass (validation)",
                                           progress=progress)
    enc, _ = cache_questions(probe, corpus, corpus.encoder_idx, p.batch_size, candidates=None, desc="frozen pass (encoder)", progress=progress,
                             on_batch=lambda f: report("frozen pass", 0.3 + 0.2 * f))
    enc_val, _ = cache_questions(probe, corpus, corpus.encoder_val_idx, p.batch_size, candidates=None, desc="frozen pass (encoder validation)",
                                 progress=progress)
    timings["frozen_pass_s"] = time.perf_counter() - t0
    report("frozen pass", 0.5)
    return FrozenStates(enc + dec, enc_val + dec_val, dec_ctx, dec_val_ctx)


def _stage_encoder(probe: LlamdexModel, corpus: SyntheticCorpus, states: FrozenStates, p: Preset, seed: int, progress: bool,
                   report: Progress, timings: dict[str, float]) -> tuple[ExpertEncoder, dict, dict]:
    """Trains the encoder, checks it per column, and retrains with more questions for the weak columns if needed."""
    fe = FeatureEncoder(probe.schema)
    t0 = time.perf_counter()
    gen = generator(seed)
    encoder = train_encoder(probe.encoder.train(), states.encoder, epochs=p.encoder_epochs, lr=p.encoder_lr, gen=gen, progress=progress,
                            on_epoch=lambda f: report("stage 1: encoder", 0.5 + 0.2 * f), batch_size=p.encoder_batch,
                            min_steps=p.encoder_min_steps)
    timings["encoder_train_s"] = time.perf_counter() - t0
    first = extraction_report(encoder, states.encoder_val, fe)
    missed = shortfalls(first, p.thresholds)
    rounds = []
    for r in range(p.retrain_rounds):
        if not missed:
            break
        t0 = time.perf_counter()
        weak = set(missed)
        n = max(round(p.retrain_questions * (len(corpus.encoder_idx) + len(corpus.decoder_idx))), p.batch_size)
        idx = corpus.add_questions(n, weak, seed=seed + 1000 + r)
        log.info("self-check: %d column(s) below threshold (%s); %d more questions stating them", len(weak), ", ".join(sorted(weak)), len(idx))
        extra, _ = cache_questions(probe, corpus, idx, p.batch_size, candidates=None, desc=f"self-check round {r + 1}: frozen pass", progress=progress)
        states.encoder += extra
        encoder = train_encoder(encoder, states.encoder, epochs=p.retrain_epochs, lr=p.encoder_lr / 2, gen=gen, progress=progress,
                                desc=f"self-check round {r + 1}: encoder", batch_size=p.encoder_batch)
        report_r = extraction_report(encoder, states.encoder_val, fe)
        rounds.append({"weak_columns": sorted(weak), "extra_questions": len(idx), "seconds": round(time.perf_counter() - t0, 1)})
        missed = shortfalls(report_r, p.thresholds)
        first = report_r
        timings[f"self_check_round{r + 1}_s"] = time.perf_counter() - t0
    check = {"thresholds": thresholds_dict(p.thresholds), "passed": not missed, "retrain_rounds": rounds, "missed": missed,
             "validation_questions": len(corpus.encoder_val_idx) + len(corpus.decoder_val_idx)}
    if missed:
        log.warning("self-check: the encoder still misses the thresholds on %s", describe_shortfalls(missed))
    report("stage 1: encoder", 0.7)
    return encoder, first, check


def _stage_decoder(probe: LlamdexModel, config: ConnectorConfig, candidates: tuple[int, ...], states: FrozenStates, p: Preset, seed: int,
                   progress: bool, report: Progress, timings: dict[str, float]) -> tuple[ConnectorConfig, ExpertDecoder, dict]:
    """Trains one decoder per candidate k on the cached slot contexts, keeps the best on validation."""
    results = {}
    for ci, k in enumerate(candidates):
        t0 = time.perf_counter()
        cfg = replace(config, inject_layer=k)
        decoder = train_decoder(probe, cfg, states.decoder, epochs=p.decoder_epochs, lr=p.decoder_lr, seed=seed, progress=progress)
        results[k] = (evaluate_decoder(probe, cfg, decoder, states.decoder_val), decoder)
        timings[f"decoder_train_k{k}_s"] = time.perf_counter() - t0
        report(f"stage 2: decoder k={k}", 0.7 + 0.25 * (ci + 1) / len(candidates))
        log.info("inject layer %d: validation agreement %.4f, KL %.4f", k, results[k][0]["agreement"], results[k][0]["kl"])
    best = max(results, key=lambda k: (results[k][0]["agreement"], -results[k][0]["kl"]))
    return replace(config, inject_layer=best), results[best][1], {str(k): v[0] for k, v in results.items()}


def train_connectors(
    base: BaseLLM,
    schema: PublicSchema,
    preset: Preset | str = "default",
    seed: int = 0,
    progress: bool = True,
    on_progress: Progress | None = None,
) -> TrainedConnectors:
    """All stages; `on_progress(stage, fraction)` lets a service stream progress."""
    p = PRESETS[preset] if isinstance(preset, str) else preset
    t_start = time.perf_counter()
    report = on_progress or (lambda stage, frac: None)
    timings: dict[str, float] = {}
    config, candidates = _config_for(base, schema, p)
    encoder, _ = build_connectors(config, schema)
    init_parameters(encoder, generator(seed))

    t0 = time.perf_counter()
    enc_q, dec_q = p.questions_for(schema)
    reserve = p.retrain_rounds * max(round(p.retrain_questions * (enc_q + dec_q)), p.batch_size)
    options = {"filler_rate": p.filler_rate, "filler_words": filler_vocabulary(base.tokenizer, schema, p.filler_vocabulary)} if p.filler_rate else {}
    corpus = build_corpus(schema, n_synthetic=p.n_synthetic, encoder_questions=enc_q, decoder_questions=dec_q,
                          val_questions=p.val_questions, surrogate_epochs=p.surrogate_epochs, seed=seed, reserve=reserve,
                          verbalizer_options=options)
    timings["synthesis_and_surrogate_s"] = time.perf_counter() - t0
    probe = LlamdexModel(base, schema, config, encoder, ExpertDecoder(schema.label.num_classes, base.hidden_size, p.num_tokens))

    states = _frozen_pass(probe, corpus, candidates, p, progress, report, timings)
    encoder, enc_metrics, check = _stage_encoder(probe, corpus, states, p, seed, progress, report, timings)
    config, decoder, dec_metrics = _stage_decoder(probe, config, candidates, states, p, seed, progress, report, timings)
    timings["total_s"] = time.perf_counter() - t_start
    config.metrics = {"preset": p.name, "seed": seed, "questions": {"encoder": enc_q + dec_q, "decoder": dec_q, "validation": 2 * p.val_questions},
                      "encoder_validation": enc_metrics, "self_check": check, "decoder_validation": dec_metrics,
                      "inject_layer": config.inject_layer, "timings": timings}
    report("done", 1.0)
    return TrainedConnectors(config, encoder, decoder, corpus.surrogate, config.metrics)


__all__ = ["PRESETS", "Preset", "TrainedConnectors", "train_connectors"]
