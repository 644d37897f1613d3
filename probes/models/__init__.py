"""Models: loading any model offline into TransformerLens (cache, loading), converting the embedded GGUF models
(conversion), and weight and input perturbations (perturbations)."""
