"""Trains the connectors for one (base LLM, schema) pair from synthetic data only, in two stages.

`train_connectors` runs the stages in order, each in its own module: synthetic rows, the surrogate
expert and their questions (`training_data`), the expert encoder on cached layer-`j` states
(`encoder_training`), and one decoder per candidate inject layer `k` on cached layer-`k` states,
keeping the best on synthetic validation questions (`decoder_training`). Nothing here reads the
client's data or expert, and nothing touches torch's global random state: every draw comes from a
generator seeded by `seed`.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field, replace
from typing import Callable

import numpy as np
import torch

from protocol.encoding import FeatureEncoder
from protocol.schema import PublicSchema
from protocol.seeding import generator, init_parameters
from provider_party.model.base_llm import BaseLLM
from provider_party.model.connectors import ConnectorConfig, ExpertDecoder, ExpertEncoder, build_connectors
from provider_party.model.decoder_training import DecoderBatch, evaluate_decoder, train_decoder
from provider_party.model.encoder_training import EncoderBatch, evaluate_encoder, train_encoder
from provider_party.model.llamdex_model import LlamdexModel
from provider_party.model.prompting import QueryBatch
from provider_party.model.training_data import SyntheticCorpus, build_corpus, cache_states, encoder_targets

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Preset:
    """Sizes of one connector-training run; `default` fits 15 minutes per schema on 2 CPU cores."""

    name: str
    n_synthetic: int = 10_000
    encoder_questions: int = 1200
    decoder_questions: int = 320
    val_questions: int = 128
    encoder_epochs: int = 8
    decoder_epochs: int = 2
    encoder_layer: int = 12
    inject_candidates: tuple[int, ...] = (20, 24)
    num_tokens: int = 4
    batch_size: int = 16
    encoder_lr: float = 2e-3
    decoder_lr: float = 1e-3
    surrogate_epochs: int = 10


PRESETS: dict[str, Preset] = {
    "default": Preset("default"),
    "quick": Preset("quick", n_synthetic=4000, encoder_questions=480, decoder_questions=128, val_questions=64,
                    encoder_epochs=8, decoder_epochs=2, inject_candidates=(24,), surrogate_epochs=5),
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


def _stage_encoder(probe: LlamdexModel, corpus: SyntheticCorpus, p: Preset, seed: int, progress: bool, report: Progress,
                   timings: dict[str, float]) -> tuple[ExpertEncoder, dict]:
    """Caches layer-j states of the encoder's questions, trains the encoder, and scores it on the validation split."""
    fe, j = FeatureEncoder(probe.schema), p.encoder_layer

    def entry(ids: np.ndarray, batch: QueryBatch) -> EncoderBatch:
        h = probe.lm.lower(batch, [j])[j]
        return h.to(torch.float16), batch.question_mask, batch.numbers, encoder_targets(fe, corpus.rows, ids)

    t0 = time.perf_counter()
    cache = cache_states(probe, corpus.questions, corpus.encoder_idx, p.batch_size, False, entry, desc="encoder cache", progress=progress,
                         on_batch=lambda f: report("encoder cache", 0.25 * f))
    report("encoder cache", 0.25)
    val_cache = cache_states(probe, corpus.questions, corpus.encoder_val_idx, p.batch_size, False, entry, desc="encoder val cache", progress=progress)
    timings["encoder_cache_s"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    encoder = train_encoder(probe.encoder.train(), cache, epochs=p.encoder_epochs, lr=p.encoder_lr, gen=generator(seed), progress=progress,
                            on_epoch=lambda f: report("stage 1: encoder", 0.25 + 0.25 * f))
    metrics = evaluate_encoder(encoder, val_cache, fe)
    timings["encoder_train_s"] = time.perf_counter() - t0
    return encoder, metrics


def _stage_decoder(probe: LlamdexModel, config: ConnectorConfig, candidates: tuple[int, ...], corpus: SyntheticCorpus, p: Preset, seed: int,
                   progress: bool, report: Progress, timings: dict[str, float]) -> tuple[ConnectorConfig, ExpertDecoder, dict]:
    """Caches the states entering each candidate k, trains one decoder per candidate, keeps the best on validation."""

    def entry(ids: np.ndarray, batch: QueryBatch) -> DecoderBatch:
        return probe.lm.lower(batch, list(candidates)), batch, corpus.surrogate(torch.as_tensor(corpus.x[ids]))

    t0 = time.perf_counter()
    cache = cache_states(probe, corpus.questions, corpus.decoder_idx, p.batch_size, True, entry, desc="decoder cache", progress=progress,
                         on_batch=lambda f: report("decoder cache", 0.5 + 0.1 * f))
    report("decoder cache", 0.6)
    val_cache = cache_states(probe, corpus.questions, corpus.decoder_val_idx, p.batch_size, True, entry, desc="decoder val cache", progress=progress)
    timings["decoder_cache_s"] = time.perf_counter() - t0
    results = {}
    for ci, k in enumerate(candidates):
        t0 = time.perf_counter()
        cfg = replace(config, inject_layer=k)
        decoder = train_decoder(probe, cfg, cache, epochs=p.decoder_epochs, lr=p.decoder_lr, seed=seed, progress=progress)
        results[k] = (evaluate_decoder(probe, cfg, decoder, val_cache), decoder)
        timings[f"decoder_train_k{k}_s"] = time.perf_counter() - t0
        report(f"stage 2: decoder k={k}", 0.6 + 0.35 * (ci + 1) / len(candidates))
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
    """Both training stages; `on_progress(stage, fraction)` lets a service stream progress."""
    p = PRESETS[preset] if isinstance(preset, str) else preset
    t_start = time.perf_counter()
    report = on_progress or (lambda stage, frac: None)
    timings: dict[str, float] = {}
    config, candidates = _config_for(base, schema, p)
    encoder, _ = build_connectors(config, schema)
    init_parameters(encoder, generator(seed))

    t0 = time.perf_counter()
    corpus = build_corpus(schema, n_synthetic=p.n_synthetic, encoder_questions=p.encoder_questions, decoder_questions=p.decoder_questions,
                          val_questions=p.val_questions, surrogate_epochs=p.surrogate_epochs, seed=seed)
    timings["synthesis_and_surrogate_s"] = time.perf_counter() - t0
    probe = LlamdexModel(base, schema, config, encoder, ExpertDecoder(schema.label.num_classes, base.hidden_size, p.num_tokens))

    encoder, enc_metrics = _stage_encoder(probe, corpus, p, seed, progress, report, timings)
    config, decoder, dec_metrics = _stage_decoder(probe, config, candidates, corpus, p, seed, progress, report, timings)
    timings["total_s"] = time.perf_counter() - t_start
    config.metrics = {"preset": p.name, "seed": seed, "encoder_validation": enc_metrics, "decoder_validation": dec_metrics,
                      "inject_layer": config.inject_layer, "timings": timings}
    report("done", 1.0)
    return TrainedConnectors(config, encoder, decoder, corpus.surrogate, config.metrics)


__all__ = ["PRESETS", "Preset", "TrainedConnectors", "train_connectors"]
