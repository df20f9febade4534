"""Human feedback for real: candidates sampled for labelling, people ranking them in a browser,
and the rankings exported for training (`rlhfkit sample`, `rlhfkit label ...`)."""
