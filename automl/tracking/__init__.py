"""MLflow tracking of searches: the tracker (one parent run per search, a child run per evaluated
policy), what makes a search readable in the MLflow UI, per-layer reports, and reading results back
for ``automl best`` and ``automl show``."""
