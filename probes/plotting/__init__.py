"""Figures from the tidy tables alone, one module per family, sharing one style (style)."""
