"""The LLM-side baselines on the real base LLM: constrained decoding, the expert API, in-context prompting, LoRA."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from client_party.datasets import encode_table, load_table, split_table
from client_party.expert_training import TrainConfig, train_expert
from protocol.verbalizer import Verbalizer
from provider_party.model.frozen_lm import FrozenLM
from provider_party.model.prompting import PromptBuilder
from simulations.baselines.constrained import ChunkedDecoder
from simulations.baselines.expert_api import (
    ExpertAPI,
    FormGrammar,
    FormMachine,
    _vocab_strings,
)
from simulations.baselines.icl import ICLPrompter, choose_demonstrations
from simulations.baselines.lora import (
    LoRAClassifier,
    LoRAConfig,
    lora_copy,
    lower_states,
    train_lora,
)
from tests.conftest import weights_digest


pytestmark = pytest.mark.usefixtures("one_torch_thread")   # tests/conftest.py


@pytest.fixture(scope="module")
def titanic():
    df, schema = load_table("titanic")
    train, test = split_table(df, schema, seed=0)
    questions = Verbalizer(schema, seed=10_000).questions(test.head(8)[schema.feature_names].to_dict("records"))
    return train, test.head(8), schema, questions


def base_probs(base, schema, questions):
    prompts = PromptBuilder(base.tokenizer, schema)
    with torch.inference_mode():
        return FrozenLM(base).full(prompts.batch(questions, 0), prompts.verbalizer_ids).softmax(-1).numpy()


# --- constrained decoding ------------------------------------------------------------------------------


class PickOneOf:
    """Forces `lead`, lets the model choose among `choices` `n` times, then stops."""

    def __init__(self, lead, choices, n):
        self.pending, self.choices, self.left, self.fed = list(lead), list(choices), n, []

    def forced(self):
        out, self.pending = self.pending, []
        return out

    def allowed(self):
        return self.choices if self.left > 0 else None

    def feed(self, t):
        self.fed.append(t)
        self.left -= 1


def test_chunked_decoding_chooses_what_a_full_forward_pass_would(base_llm):
    tok = base_llm.tokenizer
    prompts = [tok("The capital of France is", add_special_tokens=False)["input_ids"],
               tok("One, two, three, four, five, six", add_special_tokens=False)["input_ids"]]
    choices = [tok(w, add_special_tokens=False)["input_ids"][0] for w in (" Paris", " London", ",", " seven")]
    lead = tok(" and", add_special_tokens=False)["input_ids"]
    machines = [PickOneOf(lead, choices, 3) for _ in prompts]
    stats = ChunkedDecoder(base_llm).run(prompts, machines)
    assert stats.chosen == [3, 3] and stats.forced == [len(lead), len(lead)]
    for p, m in zip(prompts, machines):      # replay without cache or padding, one row at a time
        seq = list(p) + list(lead)
        for t in m.fed:
            with torch.inference_mode():
                logits = base_llm.model(input_ids=torch.tensor([seq])).logits[0, -1]
            assert t == choices[int(logits[choices].argmax())]
            seq.append(t)


def test_form_grammar_accepts_the_schemas_values_and_nothing_else(base_llm, titanic):
    schema = titanic[2]
    g = FormGrammar(base_llm.tokenizer, schema)
    sex, age, cls = g.fields
    assert sex.valid_prefix(" fem") and sex.complete(" female") and not sex.valid_prefix(" x") and not sex.complete(" fem")
    assert sex.parse(" male") == ("male", True)
    assert age.valid_prefix(" 2") and age.complete(" 22.5") and not age.complete(" 22.") and age.complete(" unknown")
    assert age.parse(" $1,234.5") == (1234.5, True) and age.parse(" unknown") == (None, True) and age.parse(" 3.") == (None, False)
    assert not age.valid_prefix("  2") and not age.valid_prefix(" abc")
    assert cls.complete(" 1st") and not cls.valid_prefix(" 4")
    assert not cls.complete(" unknown")          # passengerClass is not nullable


def test_the_expert_api_fills_in_a_parseable_form_for_every_question(base_llm, titanic):
    train, test, schema, questions = titanic
    api = ExpertAPI(base_llm, schema)
    ext = api.extract(questions, batch_size=4)
    assert len(ext.records) == len(questions)
    for rec, ok in zip(ext.records, ext.parsed):
        assert set(rec) == {"sex", "age", "passengerClass"}
        assert rec["sex"] in (None, "female", "male") and rec["passengerClass"] in (None, "1st", "2nd", "3rd")
    assert min(ext.generated_tokens) >= 3 and ext.steps > 0
    # batching does not change what is extracted
    one = api.extract(questions[:3], batch_size=1)
    assert one.records == ext.records[:3]
    # the true values are stated in the questions; a 135M LLM copies most of them
    sex_ok = np.mean([r["sex"] == t for r, t in zip(ext.records, test["sex"])])
    assert sex_ok >= 0.75
    expert = train_expert(*encode_table(train, schema), schema, TrainConfig(epochs=2, seed=0)).model
    probs = api.answer(questions[:2], expert, batch_size=2)
    assert probs.shape == (2, 2) and np.allclose(probs.sum(1), 1, atol=1e-5)


def test_a_form_machine_ends_a_value_that_cannot_go_on_without_asking_the_model(base_llm, titanic):
    g = FormGrammar(base_llm.tokenizer, titanic[2])
    m = FormMachine(g, _vocab_strings(base_llm.tokenizer))
    assert m.forced() == list(g.fields[0].header)
    female = base_llm.tokenizer(" female", add_special_tokens=False)["input_ids"]
    assert len(female) == 1 and female[0] in m.allowed()
    m.feed(female[0])
    assert m.forced() == [g.newline] + list(g.fields[1].header)   # " female" is complete and nothing extends it
    assert m.record()[0]["sex"] == "female"


# --- in-context learning -------------------------------------------------------------------------------


def test_with_no_demonstrations_the_icl_prompt_is_the_base_llms(base_llm, titanic):
    _, test, schema, questions = titanic
    icl = ICLPrompter(base_llm, schema, test.iloc[[]], seed=0)
    prompts = PromptBuilder(base_llm.tokenizer, schema)
    for q in questions[:3]:
        assert icl.prompt_ids(q) == prompts.batch([q], 0).input_ids[0].tolist()
    assert np.allclose(icl.probs(questions, batch_size=3), base_probs(base_llm, schema, questions), atol=1e-4)


def test_cached_demonstrations_answer_as_the_whole_prompt_does(base_llm, titanic):
    train, _, schema, questions = titanic
    demos = choose_demonstrations(train, schema, 3, seed=0)
    icl = ICLPrompter(base_llm, schema, demos, seed=1)
    assert icl.k == 3 and icl.prompt_tokens(questions[0]) > 3 * 40
    cached = icl.probs(questions[:5], batch_size=2)
    whole = np.stack([icl.answer_uncached(q) for q in questions[:5]])
    assert np.allclose(cached, whole, atol=1e-4)


def test_demonstrations_are_spread_over_the_classes():
    from client_party.datasets import load_schema

    schema = load_schema("titanic")
    table = pd.DataFrame({"sex": ["male"] * 10, "age": [30.0] * 10, "passengerClass": ["3rd"] * 10, "survived": ["no"] * 8 + ["yes"] * 2})
    demos = choose_demonstrations(table, schema, 4, seed=0)
    assert sorted(demos["survived"]) == ["no", "no", "yes", "yes"]
    assert len(choose_demonstrations(table.head(3), schema, 4, seed=0)) == 3


# --- LoRA ----------------------------------------------------------------------------------------------


def test_fresh_lora_adapters_change_nothing_and_never_touch_the_shared_base(base_llm, titanic):
    _, _, schema, questions = titanic
    before = weights_digest(base_llm.model)
    cfg = LoRAConfig(layers=10)
    clf = LoRAClassifier(lora_copy(base_llm, cfg, seed=0), schema, cfg.first_layer(base_llm.num_layers))
    trainable = [n for n, p in clf.base.model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)
    assert {n.split(".")[-4] for n in trainable} == {"q_proj", "k_proj", "v_proj", "o_proj"}   # attention only, no embeddings
    assert {int(n.split("layers.")[1].split(".")[0]) for n in trainable} == set(range(base_llm.num_layers - 10, base_llm.num_layers))
    assert np.allclose(clf.probs(questions, 4), base_probs(base_llm, schema, questions), atol=1e-5)   # lora_B starts at 0
    assert weights_digest(base_llm.model) == before
    every = LoRAClassifier(lora_copy(base_llm, LoRAConfig(layers=None), seed=0), schema)
    assert {int(n.split("layers.")[1].split(".")[0]) for n, p in every.base.model.named_parameters() if p.requires_grad} == set(range(base_llm.num_layers))


def test_lora_learns_the_answer_it_is_trained_on_and_is_reproducible(base_llm, titanic):
    _, _, schema, questions = titanic
    before = weights_digest(base_llm.model)
    yes = schema.label.classes.index("yes")
    cfg = LoRAConfig(questions=8, batch_size=4, epochs=2, lr=3e-3)
    clf = train_lora(base_llm, schema, questions, np.full(len(questions), yes), cfg, seed=0)
    assert clf.history[-1] < clf.history[0]
    tuned = clf.probs(questions, 4)
    assert tuned[:, yes].mean() > base_probs(base_llm, schema, questions)[:, yes].mean() + 0.1
    # the cached frozen layers give what the whole pass gives
    cached = clf.probs(questions, 3, lower=lower_states(base_llm, schema, questions, clf.first_layer, batch_size=5))
    assert clf.first_layer == base_llm.num_layers - cfg.layers and np.allclose(cached, tuned, atol=1e-5)
    assert weights_digest(base_llm.model) == before
    small = LoRAConfig(questions=2, batch_size=2, lr=3e-3)
    runs = [train_lora(base_llm, schema, questions[:2], np.array([yes, yes]), small, seed=s).probs(questions[:2], 2) for s in (0, 0, 1)]
    assert np.array_equal(runs[0], runs[1]) and not np.array_equal(runs[0], runs[2])


def test_lora_steps_and_callback_replay_the_epoch_run(base_llm, titanic):
    """`steps` walks the same shuffled batches as `epochs` (a learning curve scores the comparison's own run), and
    `on_step` sees every step with the adapters in eval mode."""
    _, _, schema, questions = titanic
    yes = schema.label.classes.index("yes")
    labels = np.array([yes, 1 - yes] * 2)
    cfg = LoRAConfig(questions=4, batch_size=2, epochs=2, lr=3e-3, layers=2)
    by_epochs = train_lora(base_llm, schema, questions[:4], labels, cfg, seed=0)
    seen = []
    by_steps = train_lora(base_llm, schema, questions[:4], labels, cfg, seed=0, steps=5,
                          on_step=lambda step, clf: seen.append((step, clf.base.model.training)))
    assert seen == [(s, False) for s in range(1, 6)] and len(by_steps.history) == 5
    assert by_steps.history[:4] == by_epochs.history
    with pytest.raises(ValueError, match="steps must be a positive"):
        train_lora(base_llm, schema, questions[:4], labels, cfg, steps=0)


def test_lora_refuses_labels_that_are_not_class_indices(base_llm, titanic):
    schema = titanic[2]
    with pytest.raises(ValueError, match="class indices"):
        train_lora(base_llm, schema, ["q"], np.array([5]), LoRAConfig(questions=1, batch_size=1))
    with pytest.raises(ValueError, match="as many labels"):
        train_lora(base_llm, schema, ["q", "r"], np.array([0]), LoRAConfig(questions=1, batch_size=1))
    with pytest.raises(ValueError, match="layers must be in 1..30"):
        train_lora(base_llm, schema, ["q"], np.array([0]), LoRAConfig(questions=1, batch_size=1, layers=31))
