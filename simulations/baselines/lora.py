"""LoRA fine-tuning of the base LLM on questions from a table, read out the way Llamdex is.

The provider's other option when the client uploads (synthetic) data: fine-tune the LLM on it. The
rows go through the same verbalizer as every other method into questions, the target is the
label's answer word, and the adapter (`peft` LoRA on the attention projections q, k, v, o of every
layer; SmolLM2 ties its input and output embeddings, so the embedding matrix stays frozen) is
trained in float32 with the loss on the same constrained read-out that evaluation uses: the
logits of the label's verbalizer tokens at the last position of `PromptBuilder`'s prompt (the
Llamdex prompt without slots). Training and evaluation run the LoRA'd layers through
`FrozenLM`, so the computation is exactly the base LLM's plus the adapters.

The adapter is added to a private copy of the base model: peft injects its layers into the model
it wraps, and the shared base must stay untouched for the other methods.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field

import numpy as np
import torch
from torch.nn import functional as F
from tqdm.auto import tqdm

from protocol.schema import PublicSchema
from protocol.seeding import generator
from provider_party.model.base_llm import BaseLLM
from provider_party.model.frozen_lm import FrozenLM
from provider_party.model.prompting import PromptBuilder

ATTENTION_PROJECTIONS = ("q_proj", "k_proj", "v_proj", "o_proj")


@dataclass(frozen=True)
class LoRAConfig:
    """One fine-tuning run: `questions` training questions seen once each, in batches of `batch_size`."""

    rank: int = 8
    alpha: int = 16
    lr: float = 1e-3
    batch_size: int = 8
    questions: int = 640
    epochs: int = 1
    target_modules: tuple[str, ...] = ATTENTION_PROJECTIONS


@dataclass
class LoRAClassifier:
    """A LoRA'd copy of the base LLM that answers over the label's verbalizer tokens."""

    base: BaseLLM
    schema: PublicSchema
    history: list[float] = field(default_factory=list)

    def __post_init__(self):
        self.lm = FrozenLM(self.base)
        self.prompts = PromptBuilder(self.base.tokenizer, self.schema)

    @torch.inference_mode()
    def probs(self, questions: list[str], batch_size: int = 16, progress: bool = False) -> np.ndarray:
        out = np.zeros((len(questions), self.schema.label.num_classes), dtype=np.float32)
        order = np.argsort([len(q) for q in questions], kind="stable")
        for s in tqdm(range(0, len(order), batch_size), desc=f"LoRA eval {self.schema.name}", disable=not progress, leave=False):
            idx = order[s:s + batch_size]
            batch = self.prompts.batch([questions[i] for i in idx], 0).to(self.base.device)
            out[idx] = self.lm.full(batch, self.prompts.verbalizer_ids).float().softmax(-1).cpu().numpy()
        return out


def lora_copy(base: BaseLLM, config: LoRAConfig, seed: int) -> BaseLLM:
    """A copy of the base model with fresh LoRA adapters (initialised from `seed`, torch's global RNG untouched)."""
    from peft import LoraConfig, get_peft_model

    model = copy.deepcopy(base.model)
    peft_config = LoraConfig(r=config.rank, lora_alpha=config.alpha, lora_dropout=0.0, target_modules=list(config.target_modules), bias="none")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)  # peft draws lora_A from the global generator; forked so no other draw changes
        get_peft_model(model, peft_config)  # injects the adapters into `model` in place
    return BaseLLM(model=model, tokenizer=base.tokenizer, model_id=f"{base.model_id}+lora")


def train_lora(base: BaseLLM, schema: PublicSchema, questions: list[str], labels: np.ndarray, config: LoRAConfig = LoRAConfig(),
               seed: int = 0, progress: bool = False) -> LoRAClassifier:
    """Fine-tunes adapters on (question, class index) pairs; returns the classifier (the shared base is not modified)."""
    labels = np.asarray(labels, dtype=np.int64)
    if len(questions) != len(labels) or len(questions) == 0:
        raise ValueError(f"need as many labels as questions, and at least one ({len(questions)} questions, {len(labels)} labels)")
    if labels.min() < 0 or labels.max() >= schema.label.num_classes:
        raise ValueError(f"labels must be class indices 0..{schema.label.num_classes - 1}")
    tuned = lora_copy(base, config, seed)
    clf = LoRAClassifier(tuned, schema)
    params = [p for p in tuned.model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=config.lr, weight_decay=0.0)
    gen = generator(seed)
    n_steps = config.epochs * -(-len(questions) // config.batch_size)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / max(1, n_steps // 10)) * max(0.0, 1 - s / n_steps))
    tuned.model.train()
    bar = tqdm(total=n_steps, desc=f"LoRA {schema.name}", unit="step", disable=not progress, leave=False)
    for _ in range(config.epochs):
        perm = torch.randperm(len(questions), generator=gen).numpy()
        for s in range(0, len(perm), config.batch_size):
            idx = perm[s:s + config.batch_size]
            batch = clf.prompts.batch([questions[i] for i in idx], 0).to(tuned.device)
            logits = clf.lm.full(batch, clf.prompts.verbalizer_ids)
            loss = F.cross_entropy(logits.float(), torch.as_tensor(labels[idx], device=tuned.device))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            clf.history.append(float(loss))
            bar.update()
            bar.set_postfix(loss=f"{np.mean(clf.history[-10:]):.3f}")
    bar.close()
    tuned.model.eval()
    return clf
