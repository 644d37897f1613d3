"""Data: the concept datasets and their validation (concepts), the built-in task generators (tasks), the
latent-language word lists (wordlists) and text corpora for SAEs (corpus)."""
