"""Lenses: the logit and tuned lens (tuned), reading them on prompts (readout), the latent-language token sets
(vocabulary) and curves (curves)."""
