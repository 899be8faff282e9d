"""Scoring a model on held-out data: real imagery per source, the synthetic test split per class and range."""
