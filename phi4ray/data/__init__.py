"""Data: curation (curate/), synthesis (synth/), the built-in organic corpus, token mixtures, the
tokenize-and-pack passes (token_shards, packing) and the training row stream."""
