"""Early stopping of an evaluation whose running accuracy is clearly below the incumbent.

The validation split is scored batch by batch. After ``n`` of its ``N`` samples with mean
metric ``p`` (a per-sample metric in [0, 1], such as top-1 accuracy), the accuracy ``A``
on the whole split is bounded above, with probability at least ``1 - delta``, by

    U = min(p + eps, (n * p + (N - n)) / N),   eps = sqrt(ln(1 / delta) * (1 - (n - 1) / N) / (2 n))

the first term is Serfling's (1974) inequality for a sample drawn without replacement
(Hoeffding's bound with the finite-population factor), valid when the split's order is
random with respect to the policy (the project's splits are shuffled once); the second is
certain (every unseen sample correct). The evaluation stops once ``U`` is below the
incumbent's full-split accuracy, so a policy that would have become the incumbent is
stopped with probability at most ``delta`` per evaluation (over ``E`` evaluations at most
``E * delta`` by the union bound). Only the first term can err, and only if the split's
order is not random with respect to the policy.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from automl.errors import ConfigError


@dataclass(frozen=True)
class EarlyStopRule:
    """When to stop an evaluation early.

    Attributes:
        delta: allowed probability of stopping a policy that would have beaten the
            incumbent, per evaluation.
        min_fraction: never decide before this fraction of the split has been scored.
    """

    delta: float = 0.01
    min_fraction: float = 0.1

    def __post_init__(self) -> None:
        if not 0.0 < self.delta < 1.0:
            raise ConfigError(f"early-stop delta must be in (0, 1), got {self.delta!r}; 0.01 is a sound default")
        if not 0.0 <= self.min_fraction < 1.0:
            raise ConfigError(f"early-stop min_fraction must be in [0, 1), got {self.min_fraction!r}")

    def upper_bound(self, mean: float, seen: int, total: int) -> float:
        """The bound ``U`` on the full-split metric after ``seen`` of ``total`` samples."""
        if seen <= 0:
            return 1.0
        certain = (seen * mean + (total - seen)) / total
        eps = math.sqrt(math.log(1.0 / self.delta) * max(0.0, 1.0 - (seen - 1) / total) / (2.0 * seen))
        return min(mean + eps, certain)

    def should_stop(self, mean: float, seen: int, total: int, incumbent: float) -> bool:
        """Whether an evaluation at running ``mean`` after ``seen`` samples is clearly below ``incumbent``."""
        if seen >= total or seen < self.min_fraction * total:
            return False
        return self.upper_bound(mean, seen, total) < incumbent
