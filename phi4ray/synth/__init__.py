"""Synthetic data generation: rewrites, self-revision, instruction reversal, execution validation,
Q&A extraction, plurality filter. Plain Python; actors/synthesize.py runs it on Ray Data."""
