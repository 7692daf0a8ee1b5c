"""The Llamdex model: frozen base LLM + expert encoder + client expert + expert decoder, in one pass.

A query runs the base LLM once. When the pass leaves layer `j`, the encoder reads the question's
hidden states, the expert classifies the extracted features, and the decoder turns its class
probabilities into `num_tokens` hidden states; when the pass enters layer `k >= j`, those states
overwrite the reserved slot positions. Causal attention means the question never sees the slots,
so nothing is computed twice. The answer is read at the last position over the label's verbalizer
tokens.

One pass may mix tenants (`answer_mixed`): each row names its schema's connectors and its client's
expert, rows are grouped by schema for the encoder and the decoder (each group at its own `j` and
`k`), each row's expert runs on its own features, and every row shares the base LLM's layers, as
multi-adapter servers group a batch by adapter. Nothing shared is mutated, so concurrent callers
need no lock. Rows of different schemas have prompts of different lengths, and a padded batch
spends compute on the padding; where that costs more than a pass's fixed cost, the rows are laid
out in sub-batches of similar length (`length_buckets`), each still mixing tenants and schemas
(padding-aware bucketing, as servers without padding-free kernels do). The same computation split
at layer `k` (`FrozenLM.lower` then `upper`) is what training and the benchmarks use to cache the
frozen lower layers.
"""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass

import torch
from torch import nn

from protocol.schema import PublicSchema
from provider_party.model.base_llm import BaseLLM
from provider_party.model.connectors import ConnectorConfig, ExpertDecoder, ExpertEncoder
from provider_party.model.frozen_lm import FrozenLM
from provider_party.model.prompting import PromptBuilder, PromptRow, QueryBatch
from provider_party.model.slot_pass import SlotContext, full_pass, slot_logits

# The fixed cost of one extra sub-pass, in row-tokens (one token of one row through every layer).
# CPU: on 2 cores a SmolLM2 pass cost ~36 ms plus ~2 ms per row-token when this was set (196 ms for one
# 80-token question, 3.03 s for 16), so a sub-pass was worth ~18 row-tokens of padding; the stored
# docs/results/inference.json (267 ms and 4.29 s on titanic) fits ~27-42 ms plus ~3 ms per row-token,
# ~9-15 row-tokens. 32 errs toward fewer sub-passes either way. CUDA: launch and Python overhead of a few ms per pass against
# microseconds per row-token; an estimate, not measured in this repository.
SPLIT_COST_TOKENS = {"cpu": 32, "cuda": 1024}


@dataclass
class Answer:
    probs: torch.Tensor  # (B, C) over the label's classes, as read from the LLM
    expert_probs: torch.Tensor | None  # (B, C) what the expert said (None for the base LLM)


@dataclass(frozen=True)
class TenantQuery:
    """One row of a mixed batch: a question, its schema's model (connectors) and the asking client's expert.

    `expert=None` asks the base LLM alone (no slots), read over the same schema's verbalizers.
    """

    question: str
    model: "LlamdexModel"
    expert: nn.Module | None


@dataclass
class RowAnswer:
    probs: torch.Tensor  # (C,) of this row's schema
    expert_probs: torch.Tensor | None


class LlamdexModel(nn.Module):
    """Base LLM + connectors for one schema; the client's expert is an argument, so it can be swapped."""

    def __init__(self, base: BaseLLM, schema: PublicSchema, config: ConnectorConfig, encoder: ExpertEncoder, decoder: ExpertDecoder):
        super().__init__()
        if config.schema_digest != schema.digest:
            raise ValueError(f"connectors were trained for schema {config.schema_digest}, not {schema.digest}")
        if config.hidden_size != base.hidden_size or config.num_layers != base.num_layers:
            raise ValueError(f"connectors were trained for {config.base_model_id} (hidden {config.hidden_size}, {config.num_layers} layers), not {base.model_id}")
        self.base, self.schema, self.config = base, schema, config
        # placed on the base LLM's device once, here: serving never moves or changes a shared module
        self.encoder, self.decoder = encoder.to(base.device).eval(), decoder.to(base.device).eval()
        self.lm = FrozenLM(base)
        self.prompts = PromptBuilder(base.tokenizer, schema)

    @property
    def verbalizer_ids(self) -> list[int]:
        return self.prompts.verbalizer_ids

    def batch(self, questions: list[str], with_slots: bool = True) -> QueryBatch:
        return self.prompts.batch(questions, self.config.num_tokens if with_slots else 0).to(self.base.device)

    def answer(self, questions: list[str], expert: nn.Module) -> Answer:
        """One forward pass per batch: encode at layer j, run the expert, inject at layer k, read out.

        The batch stays one padded pass (no length sub-batches), so it equals the split path at layer k
        computed on the same batch (training, evaluation); serving goes through `answer_mixed`."""
        return _stack(answer_mixed([TenantQuery(q, self, expert) for q in questions], split_cost=math.inf))

    def answer_base(self, questions: list[str]) -> Answer:
        """The same question to the base LLM alone, read over the same verbalizer tokens (one padded pass)."""
        return _stack(answer_mixed([TenantQuery(q, self, None) for q in questions], split_cost=math.inf))

    @torch.inference_mode()
    def extract(self, questions: list[str]) -> list[torch.Tensor]:
        """Raw encoder outputs per column (for extraction-quality reports)."""
        batch = self.batch(questions, with_slots=False)
        h = self.lm.lower(batch, [self.config.encoder_layer])[self.config.encoder_layer]
        return self.encoder(h, batch.question_mask, batch.numbers)

    def expert_probs(self, expert: nn.Module, features: torch.Tensor) -> torch.Tensor:
        """The client's expert on encoded features, as class probabilities on the features' device."""
        return expert(features.to(next(expert.parameters()).device)).float().softmax(-1).to(features.device)

    def question_pass(self, batch: QueryBatch) -> tuple[torch.Tensor, SlotContext]:
        """What answering a slotted batch costs whatever the expert, paid once: the expert's input
        features and the question's keys and values above the inject layer (for `inject_cached`).

        Attacks and evaluations that put many experts behind the same questions use it; the keys and
        values are kept in float32 so the answers equal `answer`'s."""
        j, k = self.config.encoder_layer, self.config.inject_layer
        kept, ctx = full_pass(self.lm, batch, [j], [k], kv_dtype=torch.float32)
        return self.encoder.to_expert_input(self.encoder(kept[j], batch.question_mask, batch.numbers)), ctx

    def inject_cached(self, ctx: SlotContext, expert_probs: torch.Tensor) -> torch.Tensor:
        """The expert's slots and the positions after them through the upper layers, attending to the cached question:
        causal attention leaves the question's own states unchanged by the slots, so an expert costs
        a pass over ~10 positions instead of the whole question. Equals `answer` (tested)."""
        return slot_logits(self.lm, ctx, self.config.inject_layer, self.decoder(expert_probs), self.verbalizer_ids)


def _stack(rows: list[RowAnswer]) -> Answer:
    experts = [r.expert_probs for r in rows]
    return Answer(torch.stack([r.probs for r in rows]), None if experts[0] is None else torch.stack(experts))


def length_buckets(lengths: list[int], split_cost: float) -> list[list[int]]:
    """Row indices in sub-batches of similar length, minimising padded row-tokens + `split_cost` per extra sub-batch.

    Rows are sorted by length and cut where cutting pays (an exact O(n²) dynamic programme over the cuts);
    when all the padding costs less than one extra sub-pass, the batch stays whole.
    """
    n = len(lengths)
    if n <= 1 or n * max(lengths) - sum(lengths) <= split_cost:
        return [list(range(n))]
    order = sorted(range(n), key=lambda i: lengths[i])
    sorted_len = [lengths[i] for i in order]
    best, cut = [0.0] + [math.inf] * n, [0] * (n + 1)
    for j in range(1, n + 1):                 # rows order[:j] laid out; the last sub-batch is order[i:j], as wide as its longest
        for i in range(j):
            cost = best[i] + (j - i) * sorted_len[j - 1] + (split_cost if i else 0.0)
            if cost < best[j]:
                best[j], cut[j] = cost, i
    buckets, j = [], n
    while j > 0:
        buckets.append(order[cut[j]:j])
        j = cut[j]
    return buckets[::-1]


def default_split_cost(device: torch.device) -> float:
    return float(SPLIT_COST_TOKENS.get(device.type, SPLIT_COST_TOKENS["cuda"]))


@torch.inference_mode()
def answer_mixed(queries: list[TenantQuery], split_cost: float | None = None) -> list[RowAnswer]:
    """Answers rows of any tenants and schemas (one base LLM), each in one forward pass, all mixed in a batch.

    `split_cost` (row-tokens; default per device, `SPLIT_COST_TOKENS`) decides when rows of very different
    lengths run as sub-batches of similar length rather than padded to the longest; `math.inf` never splits.
    """
    if not queries:
        return []
    base = queries[0].model.base
    if any(q.model.base is not base for q in queries):
        raise ValueError("a mixed batch must share one base LLM")
    rows = [q.model.prompts.row(q.question, q.model.config.num_tokens if q.expert is not None else 0) for q in queries]
    cost = default_split_cost(base.device) if split_cost is None else split_cost
    out: list[RowAnswer | None] = [None] * len(queries)
    for bucket in length_buckets([len(r.ids) for r in rows], cost):
        for i, answer in zip(bucket, _answer_pass([queries[i] for i in bucket], [rows[i] for i in bucket])):
            out[i] = answer
    return out  # type: ignore[return-value]


def _answer_pass(queries: list[TenantQuery], rows: list[PromptRow]) -> list[RowAnswer]:
    """One forward pass of the base LLM over the padded rows, with every schema group's encoder, experts and slots."""
    lm = queries[0].model.lm
    base = queries[0].model.base
    groups: dict[int, list[int]] = defaultdict(list)        # schema model -> rows with an expert
    for i, q in enumerate(queries):
        if q.expert is not None:
            groups[id(q.model)].append(i)
    models = {id(q.model): q.model for q in queries}
    prompts = queries[0].model.prompts
    batch = QueryBatch.pad(rows, prompts.pad_id, 0, len(prompts.suffix_ids)).to(base.device)

    encode_at: dict[int, list[int]] = defaultdict(list)     # layer j -> schema groups reading it
    inject_at: dict[int, list[int]] = defaultdict(list)     # layer k -> schema groups writing it
    for g in groups:
        encode_at[models[g].config.encoder_layer].append(g)
        inject_at[models[g].config.inject_layer].append(g)
    expert_out: dict[int, torch.Tensor] = {}                # row -> expert probabilities
    slot_states: dict[int, torch.Tensor] = {}               # schema group -> decoder output for its rows

    def encode(g: int, h: torch.Tensor) -> None:
        m, idx = models[g], groups[g]
        sel = torch.as_tensor(idx, device=h.device)
        # connectors stay in float32 whatever the base LLM's dtype (a no-op for a float32 base)
        feats = m.encoder.to_expert_input(m.encoder(h[sel].float(), batch.question_mask[sel], batch.numbers[sel]))
        by_expert: dict[int, list[int]] = defaultdict(list)
        for pos, i in enumerate(idx):
            by_expert[id(queries[i].expert)].append(pos)
        probs = torch.empty(len(idx), m.schema.label.num_classes, device=h.device)
        for positions in by_expert.values():
            p = torch.as_tensor(positions, device=h.device)
            probs[p] = m.expert_probs(queries[idx[positions[0]]].expert, feats[p])
        for pos, i in enumerate(idx):
            expert_out[i] = probs[pos]
        slot_states[g] = m.decoder(probs)

    h = lm.embed(batch.input_ids)
    inputs = lm.inputs(batch.attention_mask, batch.position_ids)
    at = 0
    for layer in sorted(set(encode_at) | set(inject_at)):
        h = lm.run(h, inputs, at, layer)
        at = layer
        for g in encode_at.get(layer, ()):
            encode(g, h)
        if layer in inject_at:   # h is this pass's own fresh layer output: written in place, nothing shared changes
            for g in inject_at[layer]:
                sel = torch.as_tensor(groups[g], device=h.device)
                span = batch.slots(models[g].config.num_tokens)
                positions = torch.arange(span.start, span.stop, device=h.device)
                h[sel[:, None], positions[None, :]] = slot_states[g].to(h.dtype)
    h = lm.run(h, inputs, at, lm.num_layers)

    out: list[RowAnswer | None] = [None] * len(queries)
    by_schema: dict[int, list[int]] = defaultdict(list)
    for i, q in enumerate(queries):
        by_schema[id(q.model)].append(i)
    for g, idx in by_schema.items():
        sel = torch.as_tensor(idx, device=h.device)
        probs = lm.readout(h[sel], models[g].verbalizer_ids).float().softmax(-1)
        for pos, i in enumerate(idx):
            out[i] = RowAnswer(probs[pos], expert_out.get(i))
    return out  # type: ignore[return-value]


__all__ = ["SPLIT_COST_TOKENS", "Answer", "LlamdexModel", "RowAnswer", "TenantQuery", "answer_mixed", "default_split_cost", "length_buckets"]
