"""Names of the sampler app and its deployments, importable without loading Ray Serve LLM (and vLLM)."""

APP_NAME = "phi4ray-sampler"
DEPLOYMENT_PREFIX = "PhiSampler:"  # the same for either engine, so clients need not know which
