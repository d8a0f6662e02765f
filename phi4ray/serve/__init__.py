"""Serving contracts: token-level sampling, the request limits every fleet request meets, and the
client of external OpenAI-compatible endpoints."""
