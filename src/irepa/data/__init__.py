"""Data: synthetic dataset, image folders, sharded stores, VAE latents."""
