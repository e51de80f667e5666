"""Interpolation paths (SiT time: t=0 data, t=1 noise), time sampling, losses and samplers."""
