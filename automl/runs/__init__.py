"""The application's run lifecycle: the configuration of a search, the search loop and its
callbacks (journal, MLflow, progress), resume and signals, worker processes, the sensitivity stage,
and what a finished search leaves behind. The only layer (with tracking, pareto and the CLI) that
writes run directories, talks to MLflow or Optuna storage, or prints."""
