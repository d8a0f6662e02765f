"""The model: shapes (config), the Phi-4 decoder, document attention, chunked log-prob loss, the
tokenizer, HF import/export and the `init` stage that writes the first model folder."""
