"""The final fine-tune's optimiser and learning rate, old default (SGD 0.01) against new (Adam 5e-4).

Usage: ``finetune_recipe.py trial6 RUN/best_policies.json`` (a search's winner) or
``finetune_recipe.py w2a4`` (uniform W2A4, 25 % sparsity). ResNet-20, 300 steps, keep-best.
"""

import json
import sys
import time

from automl.evaluation.evaluator import EvalConfig, Evaluator, Problem
from automl.evaluation.finetune import FinetuneConfig
from automl.reference.checkpoints import reference_task
from automl.timing import pin_threads
from search_spaces.policy import Policy

pin_threads(1)
which = sys.argv[1]
task = reference_task("resnet20", threads=1)
problem = Problem.from_task(task)
ev = Evaluator(problem, EvalConfig(fidelity=2))
if which == "trial6":
    best = json.load(open(sys.argv[2]))
    policy = Policy.from_dict(next(iter(best.values()))["policy"])
else:
    policy = problem.space.uniform(2, 4, sparsity=0.25)
results = {}
for name, cfg in [("sgd_lr0.01_300", FinetuneConfig(steps=300, optimizer="sgd", lr=0.01)), ("adam_lr5e-4_300", FinetuneConfig(steps=300, optimizer="adam", lr=5e-4))]:
    t = time.perf_counter()
    m, _ = ev.final(policy, 300, "test", finetune=cfg)
    r = ev.last_finetune
    results[name] = m.accuracy
    print(f"{which} {name}: val {r.before.accuracy:.4f} -> {r.after.accuracy:.4f} (best step {r.best_step}), test {m.accuracy:.4f}, {time.perf_counter()-t:.0f} s", flush=True)
print(f"RESULT sgd_test={results['sgd_lr0.01_300']:.4f} adam_test={results['adam_lr5e-4_300']:.4f}")
