"""Evaluation (DESIGN.md stage 10): verifiable suites and a runner against any OpenAI-compatible endpoint."""
