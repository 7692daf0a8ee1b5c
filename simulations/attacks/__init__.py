"""Privacy attacks on uploaded experts (README, "Attacks and audits"): membership inference (score attacks and LiRA),
attribute inference of a sensitive column, the one-run canary audit, their metrics and reports.

Modules: `metrics` (ROC AUC, TPR at FPR, Clopper–Pearson), `mia`, `attribute`, `canary`, `report`.
They import torch and the LLM lazily where they can; import the submodule you need.
"""
