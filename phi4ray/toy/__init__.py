"""The toy verifiable domain the tiny preset trains on: chained arithmetic and prime questions
(arith), their synthetic pretraining source (synth) and their held-out eval suites (evals)."""
