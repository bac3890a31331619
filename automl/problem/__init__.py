"""The search problem in torch-free values above pricing: budgets and their feasibility, repair,
the integer program, per-layer sensitivities (the separable proxy), metrics and the evaluation cache.

Envs and searchers see a network only through these, the search space and the cost model.
"""
