"""Post-training data: Pivotal Token Search and its queries, the LLM judge, judged best-of-N SFT rows
and judge-guided DPO pairs."""
