"""Trains the connectors for one (base LLM, schema) pair from synthetic data only, in two stages.

Stage 1 trains the expert encoder to read each column's value out of layer-`j` hidden states of
synthetic questions. Stage 2 trains the decoder with the encoder frozen: ground-truth synthetic
features go through the surrogate expert, and the decoder learns to make the frozen LLM answer
with the expert's probabilities (soft cross-entropy on the verbalizer logits). The frozen layers
below `j` and `k` run once per question and are cached; only the layers above `k` run per step.
The injection layer `k` is chosen among candidates on synthetic validation questions.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field, replace
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from protocol.encoding import FeatureEncoder
from protocol.schema import PublicSchema
from protocol.verbalizer import Verbalizer
from provider_party.base_llm import BaseLLM
from provider_party.connectors import ConnectorConfig, ExpertDecoder, ExpertEncoder, build_connectors
from provider_party.llamdex_model import LlamdexModel
from provider_party.prompting import QueryBatch
from provider_party.synthesis import synthesize, train_surrogate

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


def _chunks(n: int, size: int) -> list[np.ndarray]:
    return [np.arange(s, min(s + size, n)) for s in range(0, n, size)]


def _length_sorted(questions: list[str], model: LlamdexModel) -> np.ndarray:
    """Order that groups similar lengths, so padding wastes little compute."""
    lengths = [len(model.prompts.prefix_ids(q)) for q in questions]
    return np.argsort(lengths, kind="stable")


def _encoder_targets(fe: FeatureEncoder, rows, idx: np.ndarray) -> list[torch.Tensor]:
    t = fe.targets(rows.iloc[idx])
    return [torch.as_tensor(t[b.column.name]) for b in fe.blocks]


def evaluate_encoder(encoder: ExpertEncoder, cache: list[tuple], fe: FeatureEncoder) -> dict:
    """Numeric MAE in the column's units and categorical accuracy on cached (h, mask, targets)."""
    errs: dict[str, list[float]] = {b.column.name: [] for b in fe.blocks}
    with torch.no_grad():
        for h, qmask, numbers, targets in cache:
            outs = encoder(h.float(), qmask, numbers)
            for b, o, t in zip(fe.blocks, outs, targets):
                if b.kind == "numeric":
                    present = t[:, 1] < 0.5
                    span = b.column.max - b.column.min
                    errs[b.column.name] += ((o[present, 0].clamp(0, 1) - t[present, 0]).abs() * span).tolist()
                else:
                    errs[b.column.name] += (o.argmax(-1) == t).float().tolist()
    out = {}
    for b in fe.blocks:
        v = errs[b.column.name]
        key = "mae" if b.kind == "numeric" else "accuracy"
        out[b.column.name] = {key: float(np.mean(v)) if v else None, "n": len(v)}
    return out


def train_connectors(
    base: BaseLLM,
    schema: PublicSchema,
    preset: Preset | str = "default",
    seed: int = 0,
    progress: bool = True,
    on_progress: Callable[[str, float], None] | None = None,
) -> TrainedConnectors:
    """Both training stages; `on_progress(stage, fraction)` lets a service stream progress."""
    p = PRESETS[preset] if isinstance(preset, str) else preset
    t_start = time.perf_counter()
    torch.manual_seed(seed)
    report = on_progress or (lambda stage, frac: None)
    fe = FeatureEncoder(schema)
    candidates = tuple(k for k in p.inject_candidates if p.encoder_layer <= k < base.num_layers) or (base.num_layers - 2,)
    config = ConnectorConfig(
        base_model_id=base.model_id, schema_digest=schema.digest, hidden_size=base.hidden_size,
        num_layers=base.num_layers, num_tokens=p.num_tokens, encoder_layer=p.encoder_layer, inject_layer=candidates[0],
    )
    encoder, _ = build_connectors(config, schema)
    timings: dict[str, float] = {}

    # Synthetic rows and the surrogate expert.
    t0 = time.perf_counter()
    n_rows = max(p.n_synthetic, p.encoder_questions + p.decoder_questions + 2 * p.val_questions)
    rows, labels = synthesize(schema, n=n_rows, seed=seed)
    x_all = fe.encode_frame(rows)
    surrogate = train_surrogate(schema, x_all, labels, epochs=p.surrogate_epochs, seed=seed)
    timings["synthesis_and_surrogate_s"] = time.perf_counter() - t0
    verbalizer = Verbalizer(schema, seed=seed)
    questions = verbalizer.questions(rows.to_dict("records")[: p.encoder_questions + p.decoder_questions + 2 * p.val_questions])
    probe = LlamdexModel(base, schema, config, encoder, ExpertDecoder(schema.label.num_classes, base.hidden_size, p.num_tokens))
    n_enc, n_dec, n_val = p.encoder_questions, p.decoder_questions, p.val_questions
    enc_idx = np.arange(0, n_enc)
    enc_val_idx = np.arange(n_enc, n_enc + n_val)
    dec_idx = np.arange(n_enc + n_val, n_enc + n_val + n_dec)
    dec_val_idx = np.arange(n_enc + n_val + n_dec, n_enc + 2 * n_val + n_dec)

    # Stage 1: cache layer-j states of the question prefix, then fit the encoder.
    t0 = time.perf_counter()

    def cache(idx: np.ndarray, desc: str, make_entry, with_slots: bool, start: float = 0.0, span: float = 0.0) -> list[tuple]:
        """Runs the frozen lower layers once per question (length-sorted batches) and keeps what training needs."""
        out = []
        order = idx[_length_sorted([questions[i] for i in idx], probe)]
        chunks = _chunks(len(order), p.batch_size)
        for ci, chunk in enumerate(tqdm(chunks, desc=desc, disable=not progress, leave=False)):
            if span:
                report(desc, start + span * ci / len(chunks))
            ids = order[chunk]
            out.append(make_entry(ids, probe.batch([questions[i] for i in ids], with_slots=with_slots)))
        return out

    def encoder_entry(ids: np.ndarray, batch: QueryBatch) -> tuple:
        h = base_lm.lower(batch, [p.encoder_layer])[p.encoder_layer]
        return h.to(torch.float16), batch.question_mask, batch.numbers, _encoder_targets(fe, rows, ids)

    def decoder_entry(ids: np.ndarray, batch: QueryBatch) -> tuple:
        return base_lm.lower(batch, list(candidates)), batch, surrogate(torch.as_tensor(x_all[ids]))

    base_lm = probe.lm
    with torch.no_grad():
        enc_cache = cache(enc_idx, "encoder cache", encoder_entry, False, 0.0, 0.25)
        report("encoder cache", 0.25)
        enc_val_cache = cache(enc_val_idx, "encoder val cache", encoder_entry, False)
    timings["encoder_cache_s"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    opt = torch.optim.AdamW(encoder.parameters(), lr=p.encoder_lr, weight_decay=0.01)
    total_steps = p.encoder_epochs * len(enc_cache)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=p.encoder_lr, total_steps=max(total_steps, 1), pct_start=0.1)
    gen = torch.Generator().manual_seed(seed)
    encoder.train()
    bar = tqdm(total=total_steps, desc="stage 1: encoder", disable=not progress, leave=False)
    for epoch in range(p.encoder_epochs):
        for ci in torch.randperm(len(enc_cache), generator=gen).tolist():
            h, qmask, numbers, targets = enc_cache[ci]
            loss = encoder.loss(h.float(), qmask, numbers, targets)
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            bar.update(1)
            bar.set_postfix(loss=f"{loss.item():.4f}")
        report("stage 1: encoder", 0.25 + 0.25 * (epoch + 1) / p.encoder_epochs)
    bar.close()
    encoder.eval().requires_grad_(False)
    enc_metrics = evaluate_encoder(encoder, enc_val_cache, fe)
    timings["encoder_train_s"] = time.perf_counter() - t0
    del enc_cache

    # Stage 2: cache layer-k inputs for each candidate k, then fit one decoder per candidate.
    t0 = time.perf_counter()

    with torch.no_grad():
        dec_cache = cache(dec_idx, "decoder cache", decoder_entry, True, 0.5, 0.1)
        report("decoder cache", 0.6)
        dec_val_cache = cache(dec_val_idx, "decoder val cache", decoder_entry, True)
    timings["decoder_cache_s"] = time.perf_counter() - t0

    results = {}
    for ci, k in enumerate(candidates):
        t0 = time.perf_counter()
        decoder = _train_decoder(probe, replace(config, inject_layer=k), dec_cache, p, seed, progress)
        val = _eval_decoder(probe, replace(config, inject_layer=k), decoder, dec_val_cache)
        results[k] = (val, decoder)
        timings[f"decoder_train_k{k}_s"] = time.perf_counter() - t0
        report(f"stage 2: decoder k={k}", 0.6 + 0.35 * (ci + 1) / len(candidates))
        log.info("inject layer %d: validation agreement %.4f, KL %.4f", k, val["agreement"], val["kl"])
    best_k = max(results, key=lambda k: (results[k][0]["agreement"], -results[k][0]["kl"]))
    config = replace(config, inject_layer=best_k)
    decoder = results[best_k][1]
    timings["total_s"] = time.perf_counter() - t_start
    config.metrics = {
        "preset": p.name,
        "seed": seed,
        "encoder_validation": enc_metrics,
        "decoder_validation": {str(k): v[0] for k, v in results.items()},
        "inject_layer": best_k,
        "timings": timings,
    }
    report("done", 1.0)
    return TrainedConnectors(config, encoder, decoder, surrogate, config.metrics)


def _augment(logits: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Expert outputs the decoder must transmit: tempered surrogate outputs and uniform simplex draws.

    A surrogate trained on well-separated synthetic data is almost always confident, while real
    (and DP) experts often are not; the decoder must carry any probability vector faithfully.
    """
    B, C = logits.shape
    temp = torch.exp(torch.empty(B, 1).uniform_(math.log(0.5), math.log(8.0), generator=gen))
    p = (logits / temp).softmax(-1)
    dirichlet = -torch.log(torch.rand(B, C, generator=gen).clamp_min(1e-9))
    uniform = dirichlet / dirichlet.sum(-1, keepdim=True)
    pick = torch.rand(B, 1, generator=gen) < 0.5
    return torch.where(pick, uniform, p)


def _init_decoder(decoder: ExpertDecoder, cache: list[tuple], k: int) -> None:
    """Starts the output LayerNorm at the typical scale of the residual stream at layer k."""
    h = cache[0][0][k]
    rms = h.float().pow(2).mean(-1).sqrt().median()
    with torch.no_grad():
        decoder.norm.weight.fill_(float(rms))


def _train_decoder(model: LlamdexModel, config: ConnectorConfig, cache: list[tuple], p: Preset, seed: int, progress: bool) -> ExpertDecoder:
    torch.manual_seed(seed)
    decoder = ExpertDecoder(model.schema.label.num_classes, config.hidden_size, config.num_tokens, config.decoder_ffn)
    _init_decoder(decoder, cache, config.inject_layer)
    opt = torch.optim.AdamW(decoder.parameters(), lr=p.decoder_lr)
    gen = torch.Generator().manual_seed(seed + 1)
    total = p.decoder_epochs * len(cache)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=p.decoder_lr, total_steps=max(total, 1), pct_start=0.15)
    bar = tqdm(total=total, desc=f"stage 2: decoder k={config.inject_layer}", disable=not progress, leave=False)
    k = config.inject_layer
    decoder.train()
    for _ in range(p.decoder_epochs):
        for ci in torch.randperm(len(cache), generator=gen).tolist():
            hs, batch, logits = cache[ci]
            target = _augment(logits, gen)
            h = hs[k].float().clone()
            h[:, batch.slot_slice] = decoder(target)
            out = model.lm.upper(h, batch, k, model.verbalizer_ids)
            loss = F.cross_entropy(out, target)
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            bar.update(1)
            bar.set_postfix(loss=f"{loss.item():.4f}")
    bar.close()
    return decoder.eval().requires_grad_(False)


@torch.no_grad()
def _eval_decoder(model: LlamdexModel, config: ConnectorConfig, decoder: ExpertDecoder, cache: list[tuple]) -> dict:
    """Agreement of the LLM's answer with the surrogate expert's, and their KL, on validation questions."""
    agree, kls, n = 0, [], 0
    gen = torch.Generator().manual_seed(123)
    k = config.inject_layer
    for hs, batch, logits in cache:
        for target in (logits.softmax(-1), _augment(logits, gen)):
            h = hs[k].float().clone()
            h[:, batch.slot_slice] = decoder(target)
            out = model.lm.upper(h, batch, k, model.verbalizer_ids)
            agree += int((out.argmax(-1) == target.argmax(-1)).sum())
            kls.append(float(F.kl_div(out.log_softmax(-1), target, reduction="batchmean")))
            n += len(target)
    return {"agreement": agree / max(n, 1), "kl": float(np.mean(kls)), "n": n}
