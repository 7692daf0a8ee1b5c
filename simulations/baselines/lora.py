"""LoRA fine-tuning of the base LLM on questions from a table, read out the way Llamdex is.

The provider's other option when the client uploads (synthetic) data: fine-tune the LLM on it. The
rows go through the same verbalizer as every other method into questions, the target is the
label's answer word, and the adapters (`peft` LoRA on the attention projections q, k, v, o;
SmolLM2 ties its input and output embeddings, so the embedding matrix stays frozen) are trained in
float32 with the loss on the same constrained read-out that evaluation uses: the logits of the
label's verbalizer tokens at the last position of `PromptBuilder`'s prompt (the Llamdex prompt
without slots). Training and evaluation run the layers through `FrozenLM`, so the computation is
exactly the base LLM's plus the adapters.

`LoRAConfig.layers` puts adapters on the top layers only (default: the upper half). The frozen
layers below them are then the base LLM's own, so their output is computed once per question,
without gradients, and cached (`lower_states`); training runs forward and backward through the
adapted layers only, and evaluation reuses one cache of the held-out questions for every adapter.
On 2 CPU cores this about halves a run, which buys more training questions in the same time (the
trade made here; `layers=None` adapts every layer and caches nothing).

The adapters are added to a private copy of the base model: peft injects its layers into the model
it wraps, and the shared base must stay untouched for the other methods.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch
from torch.nn import functional as F
from tqdm.auto import tqdm

from protocol.schema import PublicSchema
from protocol.seeding import generator
from provider_party.model.base_llm import BaseLLM
from provider_party.model.frozen_lm import FrozenLM
from provider_party.model.prompting import PromptBuilder, QueryBatch

ATTENTION_PROJECTIONS = ("q_proj", "k_proj", "v_proj", "o_proj")


@dataclass(frozen=True)
class LoRAConfig:
    """One fine-tuning run: `questions` training questions, `epochs` passes in batches of `batch_size`.

    layers: adapters on the top `layers` decoder layers (None: every layer).

    Step budget and learning rate (`python -m simulations.benchmarks.lora_curve`, on real training
    questions, scored on validation records from the training split, docs/results/lora_curve.json):
    the adapters sit at the label prior until they suddenly learn, and the earlier default (40 steps
    at 1e-3, decayed to 0) stopped before that even on real data (lora_real on titanic: balanced
    accuracy 0.51). At 1e-3, titanic learns between steps 40 and 80 and credit not by step 60; at
    3e-3, titanic learns by step 40. Hence 3e-3, constant after `warmup` steps, for 120 steps (960
    questions in batches of 8), which fits the 5-minute budget on 2 cores.
    """

    rank: int = 8
    alpha: int = 16
    lr: float = 3e-3
    batch_size: int = 8
    questions: int = 960
    epochs: int = 1
    warmup: int = 4
    layers: int | None = 15
    target_modules: tuple[str, ...] = ATTENTION_PROJECTIONS

    def first_layer(self, num_layers: int) -> int:
        """Index of the lowest adapted layer."""
        if self.layers is None:
            return 0
        if not 1 <= self.layers <= num_layers:
            raise ValueError(f"LoRAConfig.layers must be in 1..{num_layers} (the base LLM's layers) or None, got {self.layers}")
        return num_layers - self.layers


LowerStates = list[torch.Tensor]  # per question: states entering the first adapted layer, (tokens, hidden), no padding


@dataclass
class LoRAClassifier:
    """A LoRA'd copy of the base LLM that answers over the label's verbalizer tokens."""

    base: BaseLLM
    schema: PublicSchema
    first_layer: int = 0
    history: list[float] = field(default_factory=list)

    def __post_init__(self):
        self.lm = FrozenLM(self.base)
        self.prompts = PromptBuilder(self.base.tokenizer, self.schema)

    def _batch(self, questions: list[str]) -> QueryBatch:
        return self.prompts.batch(questions, 0).to(self.base.device)

    def logits(self, questions: list[str], lower: LowerStates | None = None) -> torch.Tensor:
        """Verbalizer logits (B, C); with `lower`, the frozen layers below the adapters are not run again."""
        batch = self._batch(questions)
        if self.first_layer == 0 or lower is None:
            return self.lm.full(batch, self.prompts.verbalizer_ids)
        width = batch.input_ids.shape[1]
        h = torch.zeros((len(questions), width, self.base.hidden_size), dtype=self.lm.dtype, device=self.base.device)
        for i, s in enumerate(lower):
            h[i, width - len(s):] = s
        return self.lm.upper(h, batch, self.first_layer, self.prompts.verbalizer_ids)

    @torch.inference_mode()
    def probs(self, questions: list[str], batch_size: int = 16, lower: LowerStates | None = None, progress: bool = False) -> np.ndarray:
        out = np.zeros((len(questions), self.schema.label.num_classes), dtype=np.float32)
        order = np.argsort([len(q) for q in questions], kind="stable")
        for s in tqdm(range(0, len(order), batch_size), desc=f"LoRA eval {self.schema.name}", disable=not progress, leave=False):
            idx = order[s:s + batch_size]
            low = None if lower is None else [lower[i] for i in idx]
            out[idx] = self.logits([questions[i] for i in idx], low).float().softmax(-1).cpu().numpy()
        return out


@torch.inference_mode()
def lower_states(base: BaseLLM, schema: PublicSchema, questions: list[str], layer: int, batch_size: int = 16,
                 progress: bool = False) -> LowerStates:
    """The base LLM's states entering `layer` for each question (shared by every adapter above that layer)."""
    prompts, lm = PromptBuilder(base.tokenizer, schema), FrozenLM(base)
    out: list[torch.Tensor | None] = [None] * len(questions)
    order = np.argsort([len(q) for q in questions], kind="stable")
    for s in tqdm(range(0, len(order), batch_size), desc=f"frozen layers 0..{layer - 1}", disable=not progress, leave=False):
        idx = order[s:s + batch_size]
        batch = prompts.batch([questions[i] for i in idx], 0).to(base.device)
        h = lm.lower(batch, [layer])[layer]
        lengths = batch.attention_mask.sum(1).tolist()
        for row, i in enumerate(idx):
            out[i] = h[row, h.shape[1] - lengths[row]:].clone()
    return out  # type: ignore[return-value]


def lora_copy(base: BaseLLM, config: LoRAConfig, seed: int) -> BaseLLM:
    """A copy of the base model with fresh LoRA adapters (initialised from `seed`, torch's global RNG untouched)."""
    from peft import LoraConfig, get_peft_model

    model = copy.deepcopy(base.model)
    first = config.first_layer(base.num_layers)
    layers = list(range(first, base.num_layers)) if first > 0 else None
    peft_config = LoraConfig(r=config.rank, lora_alpha=config.alpha, lora_dropout=0.0, target_modules=list(config.target_modules),
                             bias="none", layers_to_transform=layers)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)  # peft draws lora_A from the global generator; forked so no other draw changes
        get_peft_model(model, peft_config)  # injects the adapters into `model` in place
    return BaseLLM(model=model, tokenizer=base.tokenizer, model_id=f"{base.model_id}+lora")


def train_lora(base: BaseLLM, schema: PublicSchema, questions: list[str], labels: np.ndarray, config: LoRAConfig = LoRAConfig(),
               seed: int = 0, progress: bool = False, *, steps: int | None = None,
               on_step: Callable[[int, LoRAClassifier], None] | None = None, lower: LowerStates | None = None) -> LoRAClassifier:
    """Fine-tunes adapters on (question, class index) pairs; returns the classifier (the shared base is not modified).

    steps: train exactly this many steps, reshuffling as many epochs as that needs, instead of
    `config.epochs` passes. on_step(step, classifier) runs after every step with the adapters in
    eval mode, so a learning curve (`simulations.benchmarks.lora_curve`) can score the very run the
    comparison makes rather than a copy of its loop. lower: `lower_states` of `questions` at
    `config.first_layer`, when the caller already has them (else computed here).
    """
    labels = np.asarray(labels, dtype=np.int64)
    if len(questions) != len(labels) or len(questions) == 0:
        raise ValueError(f"need as many labels as questions, and at least one ({len(questions)} questions, {len(labels)} labels)")
    if labels.min() < 0 or labels.max() >= schema.label.num_classes:
        raise ValueError(f"labels must be class indices 0..{schema.label.num_classes - 1}")
    if steps is not None and steps < 1:
        raise ValueError(f"steps must be a positive number of optimizer steps, got {steps}")
    first = config.first_layer(base.num_layers)
    tuned = lora_copy(base, config, seed)
    clf = LoRAClassifier(tuned, schema, first)
    if lower is None and first > 0:
        lower = lower_states(base, schema, questions, first, progress=progress)
    params = [p for p in tuned.model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=config.lr, weight_decay=0.0)
    gen = generator(seed)
    n_steps = steps if steps is not None else config.epochs * -(-len(questions) // config.batch_size)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / config.warmup))  # constant after warm-up, as measured
    tuned.model.train()
    bar = tqdm(total=n_steps, desc=f"LoRA {schema.name}", unit="step", disable=not progress, leave=False)
    step = 0
    while step < n_steps:
        perm = torch.randperm(len(questions), generator=gen).numpy()
        for s in range(0, len(perm), config.batch_size):
            idx = perm[s:s + config.batch_size]
            logits = clf.logits([questions[i] for i in idx], None if lower is None else [lower[i] for i in idx])
            loss = F.cross_entropy(logits.float(), torch.as_tensor(labels[idx], device=tuned.device))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            step += 1
            clf.history.append(float(loss.detach()))
            bar.update()
            bar.set_postfix(loss=f"{np.mean(clf.history[-10:]):.3f}")
            if on_step is not None:
                tuned.model.eval()
                on_step(step, clf)
                tuned.model.train()
            if step >= n_steps:
                break
    bar.close()
    tuned.model.eval()
    return clf
