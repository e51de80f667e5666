"""Diffusion transformers (SiT family)."""
