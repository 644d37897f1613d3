"""Depth usage, what each layer does: sublayer contributions, layer skipping and linear shortcuts
(contributions), layer maps (layer_maps) and representation quality (representation_quality, with the augmented
views of augmentation)."""
