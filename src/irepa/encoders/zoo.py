"""The zoo: the paper's 27 study encoders, SigLIP / SigLIP 2 / SAM 2, and the classic baselines.

Each entry states where its settings come from. "iREPA" refers to the official code (End2End-Diffusion/iREPA
``ldm/vision_encoder.py`` @99ad4ac), "REPA" to sihyun-yu/REPA; the facts are collected in the project's
paper notes §7.2 and prior-implementations §3. Parameter counts are those of the modules as built here, counted
on the ``meta`` device (tests check them). Hub revisions are ``main``: the commit actually used is recorded with
every feature file; pin one with ``--revision``.
"""

from __future__ import annotations

from irepa.encoders.spec import (
    CLIP_MEAN,
    CLIP_STD,
    ENCODERS,
    HALF,
    IMAGENET_MEAN,
    IMAGENET_STD,
    EncoderSpec,
    Preprocessing,
    WeightSource,
)

#: Parameters (millions) of each module as built at 256 px, counted on the meta device (checked by the tests).
PARAMS_M: dict[str, float] = {
    "dinov2-vit-b": 85.72,
    "dinov2-vit-l": 303.23,
    "dinov2-vit-g": 1134.77,
    "dinov3-vit-b16": 85.64,
    "dinov3-vit-l16": 303.08,
    "dinov3-vit-h16plus": 840.51,
    "dinov3-vit-7b16": 6716.03,
    "webssl-vit-dino300m_full2b_224": 303.66,
    "webssl-vit-dino1b_full2b_224": 1134.77,
    "webssl-vit-dino2b_full2b_224": 2084.24,
    "webssl-vit-dino3b_full2b_224": 2948.32,
    "pe-vit-b": 93.72,
    "pe-vit-l": 316.82,
    "pe-vit-g": 1880.85,
    "langpe-vit-l": 290.63,
    "langpe-vit-g": 1739.74,
    "spatialpe-vit-b": 85.84,
    "spatialpe-vit-l": 303.18,
    "spatialpe-vit-g": 1850.71,
    "cradio-vit-b": 85.87,
    "cradio-vit-l": 303.42,
    "dino-vit-b": 85.84,
    "clip-vit-L": 303.97,
    "mocov3-vit-s": 21.69,
    "mocov3-vit-b": 85.84,
    "mocov3-vit-l": 303.36,
    "jepa-vit-h": 630.76,
    "mae-vit-l": 303.36,
    "siglip-vit-b": 92.93,
    "siglip-vit-l": 315.96,
    "siglip-vit-so400m": 427.68,
    "siglip2-vit-b": 92.93,
    "siglip2-vit-l": 315.96,
    "siglip2-vit-so400m": 427.89,
    "siglip2-vit-g": 1163.17,
    "sam2-vit-s": 33.95,
    "sam2-vit-b": 68.68,
    "sam2-vit-l": 212.15,
    "pixels": 0.0,
    "hog": 0.0,
}

# ----------------------------------------------------------------------------------------------------------------------
# Preprocessing presets

_IMAGENET_BICUBIC = {"official": Preprocessing(IMAGENET_MEAN, IMAGENET_STD, "bicubic", note="ImageNet mean/std")}
_CLIP_BICUBIC = {"official": Preprocessing(CLIP_MEAN, CLIP_STD, "bicubic", note="OpenAI CLIP mean/std")}
_PE_BILINEAR = {"official": Preprocessing(HALF, HALF, "bilinear", note="PE mean = std = 0.5, bilinear (iREPA)")}
_RADIO = {
    "official": Preprocessing(
        CLIP_MEAN, CLIP_STD, "bilinear", note="RADIO's input conditioner (CLIP mean/std), applied inside its model"
    )
}
_DINOV3 = {
    "official": Preprocessing(
        IMAGENET_MEAN,
        IMAGENET_STD,
        "bilinear",
        antialias=True,
        note="torchvision Resize(antialias) + ImageNet mean/std (iREPA); a no-op resize at 256/512 px",
    )
}
# SigLIP was trained with mean = std = 0.5; the iREPA code feeds it ImageNet statistics (End2End-Diffusion/iREPA#8).
_SIGLIP = {
    "native": Preprocessing(HALF, HALF, "bicubic", note="SigLIP's training normalization (corrected)"),
    "irepa": Preprocessing(
        IMAGENET_MEAN, IMAGENET_STD, "bicubic", note="ImageNet mean/std as in the iREPA code (compatibility)"
    ),
}


def _add(fields: dict) -> None:
    ENCODERS.register(fields["id"], EncoderSpec(params_m=PARAMS_M[fields["id"]], **fields))


def _timm_hub(name: str, **kwargs: object) -> WeightSource:
    """Weights of a timm model on the Hub (``timm/<name>/model.safetensors``)."""
    return WeightSource(repo_id=f"timm/{name}", filename="model.safetensors", **kwargs)  # type: ignore[arg-type]


# ----------------------------------------------------------------------------------------------------------------------
# DINOv2 (timm). REPA/iREPA: bicubic resize to 224·(res/256), ImageNet norm, pos-embed resampled to the grid with
# timm's resample_abs_pos_embed (the same call timm applies at load), x_norm_patchtokens.

for _size, _timm, _dim, _file in (
    ("b", "vit_base_patch14_dinov2.lvd142m", 768, "dinov2_vitb14_pretrain.pth"),
    ("l", "vit_large_patch14_dinov2.lvd142m", 1024, "dinov2_vitl14_pretrain.pth"),
    ("g", "vit_giant_patch14_dinov2.lvd142m", 1536, "dinov2_vitg14_pretrain.pth"),
):
    _add(
        dict(
            id=f"dinov2-vit-{_size}",
            family="DINOv2",
            backend="timm",
            arch=_timm,
            patch_size=14,
            embed_dim=_dim,
            num_prefix_tokens=1,
            has_cls=True,
            preprocessing=_IMAGENET_BICUBIC,
            weights=_timm_hub(_timm, alt_filenames=(_file,), homepage="https://github.com/facebookresearch/dinov2"),
            license="apache-2.0",
            study=True,
            native_resolution=518,
            notes="patch 14: 224 px input at 256 px images (as REPA/iREPA); official .pth files load too",
        )
    )

# ----------------------------------------------------------------------------------------------------------------------
# DINOv3 (timm Eva with RoPE; 1 CLS + 4 registers). iREPA: local hub clone + official .pth, Resize(res) + ImageNet.

for _suffix, _timm, _dim, _file, _sha in (
    ("b16", "vit_base_patch16_dinov3.lvd1689m", 768, "dinov3_vitb16_pretrain_lvd1689m-73cec8be.pth", "73cec8be"),
    ("l16", "vit_large_patch16_dinov3.lvd1689m", 1024, "dinov3_vitl16_pretrain_lvd1689m-8aa4cbdd.pth", "8aa4cbdd"),
    (
        "h16plus",
        "vit_huge_plus_patch16_dinov3.lvd1689m",
        1280,
        "dinov3_vith16plus_pretrain_lvd1689m-7c1da9a5.pth",
        "7c1da9a5",
    ),
    ("7b16", "vit_7b_patch16_dinov3.lvd1689m", 4096, "dinov3_vit7b16_pretrain_lvd1689m-a955f4ea.pth", "a955f4ea"),
):
    _add(
        dict(
            id=f"dinov3-vit-{_suffix}",
            family="DINOv3",
            backend="timm",
            arch=_timm,
            patch_size=16,
            embed_dim=_dim,
            num_prefix_tokens=5,
            has_cls=True,
            preprocessing=_DINOV3,
            weights=_timm_hub(
                _timm,
                alt_filenames=(_file,),
                alt_sha256=(_sha,),
                gated=True,
                homepage="https://ai.meta.com/resources/models-and-libraries/dinov3-downloads/",
            ),
            license="dinov3-license",
            study=True,
            native_resolution=256,
            notes="gated (DINOv3 licence); the official .pth (checksum prefix in its name) loads and is verified",
        )
    )

# ----------------------------------------------------------------------------------------------------------------------
# Web-SSL DINO (Transformers Dinov2Model; SwiGLU FFN, LayerScale 1e-5, patch 14, 224 px; facebookresearch/webssl).

for _cfg, _dim, _depth, _heads in (
    ("dino300m_full2b_224", 1024, 24, 16),
    ("dino1b_full2b_224", 1536, 40, 24),
    ("dino2b_full2b_224", 2688, 24, 21),
    ("dino3b_full2b_224", 3072, 26, 24),
):
    _add(
        dict(
            id=f"webssl-vit-{_cfg}",
            family="Web-SSL",
            backend="transformers",
            arch="Dinov2Model",
            arch_kwargs={
                "hidden_size": _dim,
                "num_hidden_layers": _depth,
                "num_attention_heads": _heads,
                "mlp_ratio": 4,
                "use_swiglu_ffn": True,
                "layerscale_value": 1e-5,
                "patch_size": 14,
                "image_size": 224,
                "layer_norm_eps": 1e-6,
            },
            patch_size=14,
            embed_dim=_dim,
            num_prefix_tokens=1,
            has_cls=True,
            preprocessing=_IMAGENET_BICUBIC,
            weights=WeightSource(
                repo_id=f"facebook/webssl-{_cfg.replace('_', '-')}",
                homepage="https://github.com/facebookresearch/webssl",
            ),
            license="see the facebookresearch/webssl model card",
            study=True,
            native_resolution=224,
            notes="Hugging Face format only (the folder's config.json defines the architecture)",
        )
    )

# ----------------------------------------------------------------------------------------------------------------------
# Perception Encoder (timm Eva). iREPA: bilinear to patch·16 px, mean = std = 0.5, forward_features(norm=False).

for _id, _family, _timm, _patch, _dim, _prefix, _native in (
    ("pe-vit-b", "PE-Core", "vit_pe_core_base_patch16_224.fb", 16, 768, 1, 224),
    ("pe-vit-l", "PE-Core", "vit_pe_core_large_patch14_336.fb", 14, 1024, 1, 336),
    ("pe-vit-g", "PE-Core", "vit_pe_core_gigantic_patch14_448.fb", 14, 1536, 0, 448),
    ("langpe-vit-l", "PE-Lang", "vit_pe_lang_large_patch14_448.fb", 14, 1024, 1, 448),
    ("langpe-vit-g", "PE-Lang", "vit_pe_lang_gigantic_patch14_448.fb", 14, 1536, 0, 448),
    ("spatialpe-vit-b", "PE-Spatial", "vit_pe_spatial_base_patch16_512.fb", 16, 768, 1, 512),
    ("spatialpe-vit-l", "PE-Spatial", "vit_pe_spatial_large_patch14_448.fb", 14, 1024, 1, 448),
    (
        "spatialpe-vit-g",
        "PE-Spatial",
        "vit_pe_spatial_gigantic_patch14_448.fb",
        14,
        1536,
        0,
        448,
    ),
):
    _add(
        dict(
            id=_id,
            family=_family,
            backend="timm",
            arch=_timm,
            patch_size=_patch,
            embed_dim=_dim,
            num_prefix_tokens=_prefix,
            has_cls=_prefix == 1,
            preprocessing=_PE_BILINEAR,
            weights=_timm_hub(_timm, homepage="https://github.com/facebookresearch/perception_models"),
            license="apache-2.0",
            final_norm=False,
            study=True,
            native_resolution=_native,
            notes=(
                "tokens before the final norm (iREPA forward_features(norm=False)); timm-format weights (timm does "
                "not resample the position embedding of official PE .pt files)"
            ),
        )
    )

# ----------------------------------------------------------------------------------------------------------------------
# C-RADIOv3 (timm ViT, 1 CLS + 7 registers). iREPA: torch.hub NVlabs/RADIO, bilinear to 256, model normalizes.

for _size, _timm, _dim in (
    ("b", "vit_base_patch16_radio_v3.c_radio", 768),
    ("l", "vit_large_patch16_radio_v3.c_radio", 1024),
):
    _add(
        dict(
            id=f"cradio-vit-{_size}",
            family="C-RADIOv3",
            backend="timm",
            arch=_timm,
            patch_size=16,
            embed_dim=_dim,
            num_prefix_tokens=8,
            has_cls=True,
            preprocessing=_RADIO,
            weights=_timm_hub(_timm, homepage="https://github.com/NVlabs/RADIO"),
            license="nvidia-open-model-license",
            study=True,
            native_resolution=512,
            notes="spatial features; RADIO's 128x128 position grid is resampled to the token grid at load (bilinear)",
        )
    )

# ----------------------------------------------------------------------------------------------------------------------
# DINO v1, OpenAI CLIP, MoCo v3, I-JEPA, MAE.

_add(
    dict(
        id="dino-vit-b",
        family="DINO",
        backend="timm",
        arch="vit_base_patch16_224.dino",
        patch_size=16,
        embed_dim=768,
        num_prefix_tokens=1,
        has_cls=True,
        preprocessing=_IMAGENET_BICUBIC,
        weights=_timm_hub(
            "vit_base_patch16_224.dino",
            alt_filenames=("dino_vitbase16_pretrain.pth",),
            homepage="https://github.com/facebookresearch/dino",
        ),
        license="apache-2.0",
        study=True,
        native_resolution=224,
        notes="pos-embed resampled once at load (iREPA resamples at run time with DINO's own interpolation)",
    )
)
_add(
    dict(
        id="clip-vit-L",
        family="CLIP",
        backend="timm",
        arch="vit_large_patch14_clip_224.openai",
        patch_size=14,
        embed_dim=1024,
        num_prefix_tokens=1,
        has_cls=True,
        preprocessing=_CLIP_BICUBIC,
        weights=_timm_hub("vit_large_patch14_clip_224.openai", homepage="https://github.com/openai/CLIP"),
        license="mit (OpenAI CLIP)",
        final_norm=False,
        study=True,
        native_resolution=224,
        notes="last transformer output without ln_post (REPA/iREPA)",
    )
)
for _size, _arch, _dim, _heads, _source in (
    (
        "s",
        "vit_small_patch16_224",
        384,
        12,
        WeightSource(
            url="https://dl.fbaipublicfiles.com/moco-v3/vit-s-300ep/vit-s-300ep.pth.tar",
            homepage="https://github.com/facebookresearch/moco-v3",
        ),
    ),
    (
        "b",
        "vit_base_patch16_224",
        768,
        12,
        WeightSource(
            url="https://dl.fbaipublicfiles.com/moco-v3/vit-b-300ep/vit-b-300ep.pth.tar",
            homepage="https://github.com/facebookresearch/moco-v3",
        ),
    ),
    (
        "l",
        "vit_large_patch16_224",
        1024,
        16,
        WeightSource(
            repo_id="REPA-E/iREPA-collections",
            filename="pretrained_models/mocov3_vitl.pth",
            alt_filenames=("mocov3_vitl.pth",),
            homepage="https://huggingface.co/REPA-E/iREPA-collections",
        ),
    ),
):
    _add(
        dict(
            id=f"mocov3-vit-{_size}",
            family="MoCo v3",
            backend="timm",
            arch=_arch,
            arch_kwargs={"num_classes": 0, "num_heads": _heads},
            patch_size=16,
            embed_dim=_dim,
            num_prefix_tokens=1,
            has_cls=True,
            preprocessing=_IMAGENET_BICUBIC,
            weights=_source,
            license="cc-by-nc-4.0",
            study=_size != "s",
            native_resolution=224,
            remap="mocov3",
            notes=(
                "official checkpoint remapped onto a timm ViT (base encoder kept, projection head dropped); "
                "sin-cos pos-embed resampled to the grid as REPA"
                + ("; ViT-S has 12 heads" if _size == "s" else "")
                + (
                    "; no public release: path as used by the iREPA collection (not verified here)"
                    if _size == "l"
                    else ""
                )
            ),
        )
    )
_add(
    dict(
        id="jepa-vit-h",
        family="I-JEPA",
        backend="timm",
        arch="vit_huge_patch14_gap_224.in1k_ijepa",
        patch_size=14,
        embed_dim=1280,
        num_prefix_tokens=0,
        has_cls=False,
        preprocessing=_IMAGENET_BICUBIC,
        weights=WeightSource(
            url="https://dl.fbaipublicfiles.com/ijepa/IN1K-vit.h.14-300e.pth.tar",
            homepage="https://github.com/facebookresearch/ijepa",
        ),
        license="cc-by-nc-4.0",
        study=True,
        native_resolution=224,
        notes="ViT-H/14 IN-1k 300 ep, official file (not on the Hub); timm reads its context 'encoder', as REPA",
    )
)
_add(
    dict(
        id="mae-vit-l",
        family="MAE",
        backend="timm",
        arch="vit_large_patch16_224.mae",
        patch_size=16,
        embed_dim=1024,
        num_prefix_tokens=1,
        has_cls=True,
        preprocessing=_IMAGENET_BICUBIC,
        weights=_timm_hub(
            "vit_large_patch16_224.mae",
            alt_filenames=("mae_pretrain_vit_large.pth",),
            homepage="https://github.com/facebookresearch/mae",
        ),
        license="cc-by-nc-4.0",
        final_norm=False,
        study=True,
        native_resolution=224,
        notes="no final norm (REPA/iREPA); 256 px input with the pos-embed resampled to 16x16 (REPA img_size=256)",
    )
)

# ----------------------------------------------------------------------------------------------------------------------
# SigLIP / SigLIP 2 (timm; not among the 27). iREPA used the HF google/siglip(2)-* checkpoints with ImageNet stats.

for _id, _family, _timm, _patch, _dim, _native, _hf in (
    ("siglip-vit-b", "SigLIP", "vit_base_patch16_siglip_256.webli", 16, 768, 256, "google/siglip-base-patch16-256"),
    ("siglip-vit-l", "SigLIP", "vit_large_patch16_siglip_256.webli", 16, 1024, 256, "google/siglip-large-patch16-256"),
    (
        "siglip-vit-so400m",
        "SigLIP",
        "vit_so400m_patch14_siglip_224.webli",
        14,
        1152,
        224,
        "google/siglip-so400m-patch14-224",
    ),
    (
        "siglip2-vit-b",
        "SigLIP 2",
        "vit_base_patch16_siglip_256.v2_webli",
        16,
        768,
        256,
        "google/siglip2-base-patch16-256",
    ),
    (
        "siglip2-vit-l",
        "SigLIP 2",
        "vit_large_patch16_siglip_256.v2_webli",
        16,
        1024,
        256,
        "google/siglip2-large-patch16-256",
    ),
    (
        "siglip2-vit-so400m",
        "SigLIP 2",
        "vit_so400m_patch16_siglip_256.v2_webli",
        16,
        1152,
        256,
        "google/siglip2-so400m-patch16-256",
    ),
    (
        "siglip2-vit-g",
        "SigLIP 2",
        "vit_giantopt_patch16_siglip_256.v2_webli",
        16,
        1536,
        256,
        "google/siglip2-giant-opt-patch16-256",
    ),
):
    _add(
        dict(
            id=_id,
            family=_family,
            backend="timm",
            arch=_timm,
            patch_size=_patch,
            embed_dim=_dim,
            num_prefix_tokens=0,
            has_cls=False,
            preprocessing=_SIGLIP,
            weights=_timm_hub(_timm, homepage=f"https://huggingface.co/{_hf}"),
            license="apache-2.0",
            native_resolution=_native,
            notes=f"same weights as {_hf} (timm conversion); default 'native' normalization, 'irepa' = iREPA's",
        )
    )

# ----------------------------------------------------------------------------------------------------------------------
# SAM 2 image encoder trunk (timm HieraDet; last stage, stride 32). iREPA: HF Sam2Model vision_encoder
# last_hidden_state after a bicubic resize to 2x the resolution, i.e. the same stride-32 stage at 512 px.

for _size, _timm, _dim, _native in (
    ("s", "sam2_hiera_small.fb_r896", 768, 896),
    ("b", "sam2_hiera_base_plus.fb_r896", 896, 896),
    ("l", "sam2_hiera_large.fb_r1024", 1152, 1024),
):
    _add(
        dict(
            id=f"sam2-vit-{_size}",
            family="SAM 2",
            backend="timm",
            arch=_timm,
            patch_size=32,
            embed_dim=_dim,
            num_prefix_tokens=0,
            has_cls=False,
            preprocessing=_IMAGENET_BICUBIC,
            weights=_timm_hub(_timm, homepage="https://github.com/facebookresearch/sam2"),
            license="apache-2.0",
            native_resolution=_native,
            accepts_img_size=False,
            notes="Hiera trunk only (no FPN neck, no mask decoder): 512 px input at 256 px images",
        )
    )

# ----------------------------------------------------------------------------------------------------------------------
# Classic baselines (weight-free; see irepa.encoders.classic).

_add(
    dict(
        id="pixels",
        family="baseline",
        backend="classic",
        arch="pixels",
        arch_kwargs={"cell": 16},
        patch_size=16,
        embed_dim=768,
        num_prefix_tokens=0,
        has_cls=False,
        preprocessing={"official": Preprocessing(HALF, HALF, "bicubic", note="pixels mapped to [-1, 1]")},
        weights=None,
        license="n/a",
        notes="raw 16x16 RGB pixel cells flattened in (channel, row, column) order",
    )
)
_add(
    dict(
        id="hog",
        family="baseline",
        backend="classic",
        arch="hog",
        arch_kwargs={"cell": 16, "cells_per_side": 2, "orientations": 9},
        patch_size=16,
        embed_dim=36,
        num_prefix_tokens=0,
        has_cls=False,
        preprocessing={"official": Preprocessing((0.0, 0.0, 0.0), (1.0, 1.0, 1.0), "bicubic", note="pixels in [0, 1]")},
        weights=None,
        license="n/a",
        notes="HOG per token: 2x2 cells of 8 px, 9 unsigned orientations, L2-Hys block norm (Dalal & Triggs)",
    )
)
