"""irepa: representation alignment (REPA / iREPA) for diffusion transformers.

Subpackages:
    align: projectors, spatial normalization, alignment losses and the hook-based aligner.
    encoders: the vision-encoder zoo (frozen teachers) with exact preprocessing and offline-first weights.
    metrics: spatial-structure metrics (LDS, CDS, SRSS, RMSC), linear probing, generative metrics.
    models, diffusion: SiT-family diffusion transformers, interpolation paths, losses and samplers.
    data, training: data preparation, the distributed trainer.
    cli: the `irepa` command line.

Time convention (stated once, used everywhere): SiT time, ``t = 0`` is clean data and ``t = 1`` is pure noise,
``x_t = alpha_t * x_0 + sigma_t * noise``. See :mod:`irepa.diffusion.paths`.
"""

__version__ = "0.1.0"
