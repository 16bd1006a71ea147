"""Emergent Misalignment research toolkit."""
