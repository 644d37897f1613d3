"""Interventions: is what a probe finds used? (docs/methods.md §8)"""
