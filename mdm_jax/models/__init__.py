"""Mamba-2 and backbone modules."""
