"""Synthetic data generation: rewrites, self-revision, instruction reversal, execution validation,
Q&A extraction, plurality filter. Plain Python; actors/data/synthesize.py runs it on Ray Data."""
