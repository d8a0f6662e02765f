"""Verification: answer oracles (math, choice, code), math expressions, the code sandbox and the
score-line grammar of model-written critiques."""
