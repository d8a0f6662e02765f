"""Synthetic data generation: rewrites, self-revision, instruction reversal, execution validation,
Q&A extraction, plurality filter, two solvers and a referee. Plain Python; actors/data/synthesize.py
runs it on Ray Data."""
