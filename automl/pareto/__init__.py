"""``automl pareto``: accuracy against cost over a sweep of budgets, mixed precision against uniform."""
