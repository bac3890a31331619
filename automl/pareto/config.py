"""The typed configuration of ``automl pareto``: a search configuration and the budgets to sweep.

Torch-free, so the command line checks a typo in ``--budgets`` or ``--metric`` in well
under a second. The sweep itself lives in :mod:`automl.pareto.sweep`.
"""

from __future__ import annotations

from dataclasses import dataclass

from automl.errors import ConfigError
from automl.problem.budget import Budget
from automl.runs.config import SearchConfig

PARETO_METRICS = ("size", "bitops")
DEFAULT_LEVELS = 8
DEFAULT_PARETO_EVALUATIONS = 20
MAX_LEVELS = 32
# Loosest and tightest default level, relative to the float model. Size: 8-bit weights are
# 1/4x of fp32, 2-bit weights 1/16x, and pruning reaches below. BitOps: W8A8 is 1/16x of
# fp32 x fp32, W2A2 1/256x.
LEVEL_RANGE = {"size": (1 / 4, 1 / 64), "bitops": (1 / 16, 1 / 256)}
UNIFORM_WEIGHT_BITS = (8, 6, 4, 3, 2)


@dataclass(frozen=True)
class ParetoConfig:
    """Every option of ``automl pareto``.

    Attributes:
        search: the settings of each search of the sweep (task, searcher, evaluations per
            level, fidelity, fine-tune, output, ...); its ``budget`` is ignored.
        budgets: explicit limits of ``metric``, each ``0.1x``, ``40kB`` or a whole
            constraint ``size<=0.1x``; empty: ``levels`` geometric levels of :data:`LEVEL_RANGE`.
        metric: ``size`` or ``bitops``: what every budget constrains and the plot's x axis.
        levels: how many default levels (only without ``budgets``); 8 when ``None``.
    """

    search: SearchConfig
    budgets: tuple[str, ...] = ()
    metric: str = "size"
    levels: int | None = None

    def __post_init__(self) -> None:
        if self.metric not in PARETO_METRICS:
            raise ConfigError(f"metric must be one of {list(PARETO_METRICS)}, got {self.metric!r}; e.g. --metric bitops")
        if self.budgets and self.levels is not None:
            raise ConfigError(
                f"give either --budgets (explicit levels) or --levels (how many default levels), not both; "
                f"got {len(self.budgets)} budgets and levels={self.levels}"
            )
        if self.levels is not None and not 2 <= self.levels <= MAX_LEVELS:
            raise ConfigError(f"levels must be between 2 and {MAX_LEVELS}, got {self.levels}")
        if self.search.run.resume:
            raise ConfigError("automl pareto starts a new sweep; it cannot resume a search (drop 'resume')")
        if self.search.run.workers != 1:
            raise ConfigError(f"automl pareto runs its searches in one process; got workers={self.search.run.workers}, use 1")
        texts = self.constraint_texts()
        if len(set(texts)) != len(texts):
            raise ConfigError(f"the budgets repeat a level: {list(texts)}; give each level once")

    def constraint_texts(self) -> tuple[str, ...]:
        """The sweep's budgets as constraint strings, checked against the grammar and the metric.

        Raises:
            BudgetError: a budget does not follow the grammar.
            ConfigError: a budget constrains another metric than :attr:`metric`, or holds several.
        """
        if not self.budgets:
            hi, lo = LEVEL_RANGE[self.metric]
            n = self.levels or DEFAULT_LEVELS
            return tuple(f"{self.metric}<={hi * (lo / hi) ** (i / (n - 1)):.4g}x" for i in range(n))
        out = []
        for item in self.budgets:
            text = item.strip()
            if not text:
                raise ConfigError(f"an empty budget in {list(self.budgets)}; give limits such as --budgets 0.25x,0.1x,0.05x")
            if "<=" not in text:
                text = f"{self.metric}<={text}"
            constraints = Budget.parse(text).constraints
            if len(constraints) != 1 or constraints[0].metric != self.metric:
                got = ", ".join(c.metric for c in constraints)
                raise ConfigError(
                    f"every budget of the sweep constrains --metric {self.metric}; {item!r} constrains {got}. "
                    f"Give limits of {self.metric} (e.g. 0.1x) or pass --metric to match"
                )
            out.append(text)
        return tuple(out)

    def to_dict(self) -> dict[str, object]:
        return {"search": self.search.to_dict(), "budgets": list(self.constraint_texts()), "metric": self.metric,
                "levels": self.levels}
