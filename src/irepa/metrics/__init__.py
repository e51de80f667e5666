"""Metrics: spatial structure of patch tokens, linear probing, generative evaluation."""
