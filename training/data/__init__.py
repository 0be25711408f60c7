"""Imagery data layer: NAIP reading and validation, the Chesapeake layout and class table,
chip sampling, dataset statistics, and the synthetic scene generator."""
