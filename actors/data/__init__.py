"""Stages `curate`, `synthesize` and `tokenize` on Ray Data."""
