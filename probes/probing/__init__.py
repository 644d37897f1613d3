"""Concept depth: the probe protocol (protocol, settings), its batched solver (solver), online-code MDL (mdl), the
depth summaries with their intervals (depth) and the shortcut audit (shortcuts)."""
