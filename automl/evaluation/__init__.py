"""The model layer: a user's task, scoring policies (PTQ, BatchNorm re-estimation, short QAT),
measured and curvature sensitivities, and the final fine-tune. Torch, the task's data; no files,
no tracking.

Submodules load on first use; :mod:`automl.evaluation.metrics`-style values live in
:mod:`automl.problem` so that envs and searchers import without torch.
"""
