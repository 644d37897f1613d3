"""Per-layer activations: pooled vectors of texts (extraction), the pipeline's activation files (storage), and
token-level caches for SAE and transcoder training (token_cache)."""
