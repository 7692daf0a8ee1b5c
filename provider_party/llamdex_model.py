"""The Llamdex model: frozen base LLM + expert encoder + client expert + expert decoder, in one pass.

A query runs the base LLM once. When the pass leaves layer `j`, the encoder reads the question's
hidden states, the expert classifies the extracted features, and the decoder turns its class
probabilities into `num_tokens` hidden states; when the pass enters layer `k >= j`, those states
overwrite the reserved slot positions. Causal attention means the question never sees the slots,
so nothing is computed twice. The answer is read at the last position over the label's verbalizer
tokens. The same computation split at layer `k` (`lower` then `upper`) is what training and the
benchmarks use to cache the frozen lower layers.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

import torch
from torch import nn

from protocol.schema import PublicSchema
from provider_party.base_llm import BaseLLM
from provider_party.connectors import ConnectorConfig, ExpertDecoder, ExpertEncoder
from provider_party.prompting import PromptBuilder, QueryBatch


class _StopForward(Exception):
    """Raised by a hook to end a forward pass once the needed layer has run."""


def _hidden(output):
    return output[0] if isinstance(output, tuple) else output


@dataclass
class Answer:
    probs: torch.Tensor  # (B, C) over the label's classes, as read from the LLM
    expert_probs: torch.Tensor | None  # (B, C) what the expert said (None for the base LLM)


_LOCKS_GUARD = threading.Lock()


def _base_lock(base: BaseLLM) -> threading.Lock:
    """One lock per loaded base model, shared by every FrozenLM built on it."""
    with _LOCKS_GUARD:
        lock = base.__dict__.get("_forward_lock")
        if lock is None:
            lock = base.__dict__["_forward_lock"] = threading.Lock()
        return lock


class FrozenLM:
    """Split access to a frozen causal LM: run it up to a layer, or from a layer to the read-out."""

    def __init__(self, base: BaseLLM):
        self.base = base
        self.inner = base.model.model
        # Hooks and layer swaps change the shared base model, so every FrozenLM over the same base
        # (one per schema, plus connector training) takes the same lock for each forward pass.
        self.lock = _base_lock(base)

    def readout(self, last_hidden: torch.Tensor, token_ids: list[int]) -> torch.Tensor:
        head = self.base.model.get_output_embeddings()
        logits = last_hidden @ head.weight[token_ids].T
        if getattr(head, "bias", None) is not None:
            logits = logits + head.bias[token_ids]
        return logits

    def lower(self, batch: QueryBatch, layers: list[int]) -> dict[int, torch.Tensor]:
        """Hidden states entering layer l (HF `hidden_states[l]`) for each l, stopping early."""
        captured: dict[int, torch.Tensor] = {}
        stop = max(layers)

        def make(l: int):
            def hook(_m, _a, out):
                captured[l] = _hidden(out).detach()
                if l == stop:
                    raise _StopForward
            return hook

        with self.lock:
            handles = [self.base.layers[l - 1].register_forward_hook(make(l)) for l in sorted(set(layers))]
            try:
                self.inner(input_ids=batch.input_ids, attention_mask=batch.attention_mask, position_ids=batch.position_ids, use_cache=False)
            except _StopForward:
                pass
            finally:
                for h in handles:
                    h.remove()
        return captured

    def upper(self, hidden: torch.Tensor, batch: QueryBatch, layer: int, token_ids: list[int]) -> torch.Tensor:
        """Runs layers `layer..end` on given hidden states and reads the last position."""
        with self.lock:
            original = self.inner.layers
            self.inner.layers = nn.ModuleList(list(original)[layer:])
            try:
                out = self.inner(inputs_embeds=hidden, attention_mask=batch.attention_mask, position_ids=batch.position_ids, use_cache=False)
            finally:
                self.inner.layers = original
        return self.readout(out.last_hidden_state[:, -1], token_ids)

    def full(self, batch: QueryBatch, token_ids: list[int], hooks: list | None = None) -> torch.Tensor:
        with self.lock:
            handles = [register() for register in (hooks or [])]
            try:
                out = self.inner(input_ids=batch.input_ids, attention_mask=batch.attention_mask, position_ids=batch.position_ids, use_cache=False)
            finally:
                for h in handles:
                    h.remove()
        return self.readout(out.last_hidden_state[:, -1], token_ids)


class LlamdexModel(nn.Module):
    """Base LLM + connectors for one schema; the client's expert is an argument, so it can be swapped."""

    def __init__(self, base: BaseLLM, schema: PublicSchema, config: ConnectorConfig, encoder: ExpertEncoder, decoder: ExpertDecoder):
        super().__init__()
        if config.schema_digest != schema.digest:
            raise ValueError(f"connectors were trained for schema {config.schema_digest}, not {schema.digest}")
        if config.hidden_size != base.hidden_size or config.num_layers != base.num_layers:
            raise ValueError(f"connectors were trained for {config.base_model_id} (hidden {config.hidden_size}, {config.num_layers} layers), not {base.model_id}")
        self.base, self.schema, self.config = base, schema, config
        self.encoder, self.decoder = encoder.eval(), decoder.eval()
        self.lm = FrozenLM(base)
        self.prompts = PromptBuilder(base.tokenizer, schema)

    @property
    def verbalizer_ids(self) -> list[int]:
        return self.prompts.verbalizer_ids

    def batch(self, questions: list[str], with_slots: bool = True) -> QueryBatch:
        return self.prompts.batch(questions, self.config.num_tokens if with_slots else 0).to(self.base.device)

    @torch.inference_mode()
    def answer(self, questions: list[str], expert: nn.Module) -> Answer:
        """One forward pass per batch: encode at layer j, run the expert, inject at layer k, read out."""
        batch = self.batch(questions)
        j, k = self.config.encoder_layer, self.config.inject_layer
        state: dict[str, torch.Tensor] = {}

        def after_j(_m, _a, out):
            h = _hidden(out)
            feats = self.encoder.to_expert_input(self.encoder(h, batch.question_mask, batch.numbers))
            state["expert"] = expert(feats.to(next(expert.parameters()).device)).float().softmax(-1).to(h.device)
            state["slots"] = self.decoder(state["expert"]).to(h.dtype)

        def before_k(_m, args, kwargs):
            h = (args[0] if args else kwargs["hidden_states"]).clone()
            h[:, batch.slot_slice] = state["slots"]
            if args:
                return (h, *args[1:]), kwargs
            return args, {**kwargs, "hidden_states": h}

        hooks = [
            lambda: self.base.layers[j - 1].register_forward_hook(after_j),
            lambda: self.base.layers[k].register_forward_pre_hook(before_k, with_kwargs=True),
        ]
        logits = self.lm.full(batch, self.verbalizer_ids, hooks)
        return Answer(probs=logits.float().softmax(-1), expert_probs=state["expert"])

    @torch.inference_mode()
    def answer_base(self, questions: list[str]) -> Answer:
        """The same question to the base LLM alone, read over the same verbalizer tokens."""
        logits = self.lm.full(self.batch(questions, with_slots=False), self.verbalizer_ids)
        return Answer(probs=logits.float().softmax(-1), expert_probs=None)

    @torch.inference_mode()
    def extract(self, questions: list[str]) -> list[torch.Tensor]:
        """Raw encoder outputs per column (for extraction-quality reports)."""
        batch = self.batch(questions, with_slots=False)
        h = self.lm.lower(batch, [self.config.encoder_layer])[self.config.encoder_layer]
        return self.encoder(h, batch.question_mask, batch.numbers)

    def inject(self, hidden_k: torch.Tensor, batch: QueryBatch, expert_probs: torch.Tensor) -> torch.Tensor:
        """Split path from cached layer-k states (training, benchmarks); equals `answer` (tested)."""
        h = hidden_k.float().clone()
        h[:, batch.slot_slice] = self.decoder(expert_probs).to(h.dtype)
        return self.lm.upper(h, batch, self.config.inject_layer, self.verbalizer_ids)
