"""Dictionaries: SAEs (sae), transcoders (transcoders), loading and scoring either (scoring), MLP neurons
(neurons) and feature pages (features)."""
