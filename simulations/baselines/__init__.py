"""The paper's baselines, run against Llamdex at the same privacy level.

A client that does not upload a model has three other ways to customize an LLM with its table:

- upload DP-synthesized data and let the provider fine-tune the LLM on it with LoRA
  (`mst` for the marginal-based synthesizer, `dp_gan` for the deep generative one, `lora` for the
  fine-tuning and its read-out);
- expose its DP expert behind an API and let the LLM fill in the expert's inputs from the question
  (`expert_api`, on the constrained decoder of `constrained`);
- put a few DP-synthesized rows into the prompt (`icl`).

`lora` also fine-tunes on the real training questions, the no-privacy upper bound. Every method is
read out the way Llamdex is (`provider_party.model.prompting`: the same chat prompt, the answer read
at the last position over the label's verbalizer tokens) on the same real held-out questions.
`simulations.benchmarks.compare` runs them all side by side.
"""
