"""Audio tagging trainer: DALI input pipeline, PSLA and pseudo-strong-label recipes."""
