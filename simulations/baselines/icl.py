"""In-context learning: k DP-synthesized rows, as answered questions, in the prompt before the question.

The demonstrations are earlier turns of the chat: each is a synthetic row through the verbalizer
with the answer instruction, answered by the assistant with the label's word. The last turn is the
query exactly as Llamdex and the base LLM see it (`PromptBuilder`: question, answer instruction,
assistant turn), read at the last position over the label's verbalizer tokens; with k = 0 the prompt
is token for token the base LLM's (tested).

Every query shares the demonstrations, so evaluation runs them once and keeps their KV cache: a
batch of queries continues from the cached prefix, and the cache is cut back to it afterwards.
Latency is measured without that reuse (the whole prompt per query), as an API without prefix
caching would run it.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from protocol.schema import PublicSchema
from protocol.verbalizer import Verbalizer, answer_instruction
from provider_party.model.base_llm import BaseLLM
from provider_party.model.prompting import PromptBuilder
from simulations.baselines.constrained import with_cache

_MARK = "\u2063QUERY\u2063"


def choose_demonstrations(table: pd.DataFrame, schema: PublicSchema, k: int, seed: int) -> pd.DataFrame:
    """k rows of a (synthetic) table, spread over its label classes as evenly as it allows, in random order."""
    rng = np.random.default_rng(seed)
    label = table[schema.label.name].astype(str).to_numpy()
    pools = {c: list(rng.permutation(np.flatnonzero(label == c))) for c in schema.label.classes}
    picked: list[int] = []
    while len(picked) < min(k, len(table)):
        for c in schema.label.classes:
            if pools[c] and len(picked) < k:
                picked.append(int(pools[c].pop()))
    return table.iloc[rng.permutation(picked)] if picked else table.iloc[[]]


class ICLPrompter:
    """The base LLM with fixed demonstrations before every query."""

    def __init__(self, base: BaseLLM, schema: PublicSchema, demonstrations: pd.DataFrame, seed: int = 0):
        self.base, self.schema = base, schema
        self.prompts = PromptBuilder(base.tokenizer, schema)
        instruction = answer_instruction(schema)
        questions = Verbalizer(schema, seed=seed).questions(demonstrations[schema.feature_names].to_dict("records"))
        words = [schema.label.verbalizers[schema.label.classes.index(str(v))] for v in demonstrations[schema.label.name]]
        messages = []
        for q, w in zip(questions, words):
            messages += [{"role": "user", "content": q.strip() + "\n" + instruction}, {"role": "assistant", "content": w}]
        self.k = len(questions)
        tok = base.tokenizer
        text = tok.apply_chat_template(messages + [{"role": "user", "content": _MARK}], tokenize=False, add_generation_prompt=True)
        head, tail = text.split(_MARK)
        # The shared prefix ends where the query's turn starts, at a special token (a clean token boundary).
        turn = head.rfind("<|im_start|>") if "<|im_start|>" in head else len(head)
        self._prefix_text, self._turn_head, self._tail = head[:turn], head[turn:], tail
        self.prefix_ids = tok(self._prefix_text, add_special_tokens=False)["input_ids"]
        self.instruction = instruction
        self._cache: dict[int, object] = {}

    def query_ids(self, question: str) -> list[int]:
        text = self._turn_head + question.strip() + "\n" + self.instruction + self._tail
        return self.base.tokenizer(text, add_special_tokens=False)["input_ids"]

    def prompt_ids(self, question: str) -> list[int]:
        return self.prefix_ids + self.query_ids(question)

    def prompt_tokens(self, question: str) -> int:
        return len(self.prefix_ids) + len(self.query_ids(question))

    @torch.inference_mode()
    def _prefix_cache(self, batch: int):
        from transformers import DynamicCache

        if batch not in self._cache:
            cache = DynamicCache(config=self.base.model.config)
            ids = torch.tensor([self.prefix_ids] * batch, device=self.base.device)
            self.base.model(input_ids=ids, use_cache=True, logits_to_keep=1, **with_cache(self.base.model, cache))
            self._cache = {batch: cache}  # one size at a time: a cache holds a few MB per row
        return self._cache[batch]

    @torch.inference_mode()
    def probs(self, questions: list[str], batch_size: int = 16, progress: bool = False) -> np.ndarray:
        """(n, C) probabilities over the label's verbalizer tokens, from the cached demonstrations."""
        out = np.zeros((len(questions), self.schema.label.num_classes), dtype=np.float32)
        order = np.argsort([len(q) for q in questions], kind="stable")
        p = len(self.prefix_ids)
        for s in tqdm(range(0, len(order), batch_size), desc=f"ICL k={self.k} {self.schema.name}", disable=not progress, leave=False):
            idx = order[s:s + batch_size]
            rows = [self.query_ids(questions[i]) for i in idx]
            width = max(len(r) for r in rows)
            ids = torch.full((len(rows), width), self.prompts.pad_id, dtype=torch.long)
            mask = torch.zeros((len(rows), p + width), dtype=torch.long)
            mask[:, :p] = 1
            pos = torch.zeros((len(rows), width), dtype=torch.long)
            for i, r in enumerate(rows):
                ids[i, width - len(r):] = torch.tensor(r)
                mask[i, p + width - len(r):] = 1
                pos[i, width - len(r):] = torch.arange(p, p + len(r))
            cache = self._prefix_cache(len(rows))
            logits = self.base.model(input_ids=ids.to(self.base.device), attention_mask=mask.to(self.base.device),
                                     position_ids=pos.to(self.base.device), use_cache=True, logits_to_keep=1,
                                     **with_cache(self.base.model, cache)).logits
            cache.crop(-width)  # back to the demonstrations alone
            out[idx] = logits[:, -1, self.prompts.verbalizer_ids].float().softmax(-1).cpu().numpy()
        return out

    @torch.inference_mode()
    def answer_uncached(self, question: str) -> np.ndarray:
        """One query with its whole prompt (no prefix reuse), as a latency measurement runs it."""
        ids = torch.tensor([self.prompt_ids(question)], device=self.base.device)
        logits = self.base.model(input_ids=ids, logits_to_keep=1).logits
        return logits[0, -1, self.prompts.verbalizer_ids].float().softmax(-1).cpu().numpy()
