"""Representation alignment: projectors, target normalization, alignment losses, the hook-based aligner."""
