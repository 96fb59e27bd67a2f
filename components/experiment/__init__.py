"""Experiments: every method as a params block (a *variant*), trained and ranked per seed on the same
split, aggregated into one report (mean ± std over seeds, change vs the plain backbone)."""
