"""Metrics on generated images (mini-GenEval: pixel-level prompt adherence)."""
