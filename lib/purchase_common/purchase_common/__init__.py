"""Shared definitions of the purchase system: one place for each fact."""
