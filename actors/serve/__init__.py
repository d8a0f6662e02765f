"""The Serve sampler fleet (vLLM, SGLang), its clients, weight refresh and stage `serve`."""
