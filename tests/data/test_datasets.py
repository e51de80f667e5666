import itertools
import json
import shutil

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

from irepa.data.datasets import StoreDataset
from irepa.data.encode import encode_latent_store
from irepa.data.prepare import prepare_folder_store
from irepa.data.sampler import ResumableSampler
from irepa.data.store import open_store
from irepa.data.vae import load_vae, save_random_vae
from irepa.errors import IrepaError


def _folder(root, names):
    rng = np.random.default_rng(len(names))
    for name in names:
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        # Asymmetric images, so a horizontal flip is visible.
        Image.fromarray(rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)).save(root / f"{name}.png")
    return root


NAMES = [f"{c}/{i}" for c in ("x", "y") for i in range(4)]


@pytest.fixture(scope="module")
def stores(tmp_path_factory):
    base = tmp_path_factory.mktemp("ds")
    _folder(base / "imgs", NAMES)
    prepare_folder_store(base / "imgs", base / "images", resolution=16, shard_size=3, workers=1)
    vae = load_vae(str(save_random_vae(base / "vae")))
    encode_latent_store(base / "images", base / "latents", vae, batch_size=4, flip=True)
    encode_latent_store(base / "images", base / "latents-noflip", vae, batch_size=4)
    return base


def test_pixel_latent_and_latent_only_modes(stores):
    pixel = StoreDataset(stores / "images")
    item = pixel[2]
    assert set(item) == {"image", "label", "index", "flipped"}
    assert item["image"].shape == (3, 16, 16) and item["image"].dtype == torch.uint8
    np.testing.assert_array_equal(
        item["image"].permute(1, 2, 0).numpy(), open_store(stores / "images").read("images", 2)
    )
    assert item["label"].dtype == torch.int64 and item["label"].item() == 0 and item["index"].item() == 2
    both = StoreDataset(stores / "images", stores / "latents")
    item = both[5]
    assert item["moments"].shape == (8, 2, 2) and item["moments"].dtype == torch.float32 and item["label"].item() == 1
    assert both.latent_shape == (4, 2, 2) and both.resolution == 16 and both.class_names == ["x", "y"]
    latents_only = StoreDataset(latents=stores / "latents")
    assert set(latents_only[5]) == {"moments", "label", "index", "flipped"}
    torch.testing.assert_close(latents_only[5]["moments"], item["moments"])
    assert latents_only[5]["label"].item() == 1 and len(latents_only) == 8
    batch = next(iter(DataLoader(both, batch_size=4)))
    assert batch["image"].shape == (4, 3, 16, 16) and batch["label"].shape == (4,)
    with pytest.raises(IndexError):
        both[8]


def test_flip_pairs_flipped_image_with_flipped_latents(stores):
    plain = StoreDataset(stores / "images", stores / "latents")
    flipping = StoreDataset(stores / "images", stores / "latents", flip="random", seed=3)
    latents = open_store(stores / "latents")
    flips = flipping.flips(0, range(8))
    assert flips.any() and not flips.all()
    for index in range(8):
        item = flipping[(0, index)]
        assert bool(item["flipped"]) == flips[index]
        if flips[index]:
            torch.testing.assert_close(item["image"], plain[index]["image"].flip(2))
            np.testing.assert_array_equal(item["moments"].numpy(), latents.read("moments_flip", index))
        else:
            torch.testing.assert_close(item["image"], plain[index]["image"])
            np.testing.assert_array_equal(item["moments"].numpy(), latents.read("moments", index))
    # Deterministic in (seed, epoch, index): another instance agrees; other epochs and seeds differ.
    again = StoreDataset(stores / "images", stores / "latents", flip="random", seed=3)
    assert (again.flips(0, range(64)) == flipping.flips(0, range(64))).all()
    assert (flipping.flips(1, range(64)) != flipping.flips(0, range(64))).any()
    assert (
        StoreDataset(stores / "images", flip="random", seed=4).flips(0, range(64)) != flipping.flips(0, range(64))
    ).any()
    flipping.set_epoch(1)
    assert bool(flipping[0]["flipped"]) == flipping.flips(1, [0])[0]
    # Pixel space flips the image itself; 'none' never flips.
    assert not plain.flips(0, range(8)).any()
    with pytest.raises(IrepaError, match=r"encoded without flipped latents .* re-run `irepa data encode --flip`"):
        StoreDataset(stores / "images", stores / "latents-noflip", flip="random")
    with pytest.raises(IrepaError, match="flip policy 'sometimes'"):
        StoreDataset(stores / "images", flip="sometimes")


def test_dataloader_workers_and_resume_see_identical_batches(stores):
    dataset = StoreDataset(stores / "images", stores / "latents", flip="random", seed=1)

    def batches(workers, state=None, n=4):
        sampler = ResumableSampler(len(dataset), global_batch_size=4, seed=9, with_epoch=True)
        if state:
            sampler.load_state_dict(state)
        loader = DataLoader(dataset, batch_size=4, sampler=sampler, num_workers=workers)
        out = []
        for batch in itertools.islice(iter(loader), n):
            out.append((batch["index"].tolist(), batch["flipped"].tolist(), batch["moments"].sum().item()))
            sampler.advance()
        return out, sampler.state_dict()

    reference, _ = batches(0, n=6)
    with_workers, state = batches(2, n=2)
    resumed, _ = batches(2, state=state, n=4)
    assert with_workers + resumed == reference


def test_key_pairing_refuses_missing_and_extra_keys(stores, tmp_path):
    # An image store with one more image than the latents were encoded from.
    _folder(tmp_path / "more", [*NAMES, "y/9"])
    prepare_folder_store(tmp_path / "more", tmp_path / "more-images", resolution=16, workers=1)
    with pytest.raises(
        IrepaError, match=r"has no latents for 1 of the 9 images .*\('y/9'\); re-run `irepa data encode"
    ):
        StoreDataset(tmp_path / "more-images", stores / "latents")
    # An image store missing an image the latents have.
    _folder(tmp_path / "less", NAMES[1:])
    prepare_folder_store(tmp_path / "less", tmp_path / "less-images", resolution=16, workers=1)
    with pytest.raises(IrepaError, match=r"has 1 keys that image store .* lacks \('x/0'\)"):
        StoreDataset(tmp_path / "less-images", stores / "latents")
    # Same keys, different pixels (e.g. re-prepared at another crop): the fingerprint check refuses it.
    shutil.copytree(stores / "imgs", tmp_path / "other")
    prepare_folder_store(tmp_path / "other", tmp_path / "other-images", resolution=16, crop="resize", workers=1)
    with pytest.raises(IrepaError, match="encoded from another version of image store"):
        StoreDataset(tmp_path / "other-images", stores / "latents")


def test_key_join_is_not_positional(stores, tmp_path):
    # A latent store whose records are in another order than the images still pairs by key.
    latents = tmp_path / "shuffled"
    shutil.copytree(stores / "latents", latents)
    manifest = json.loads((latents / "manifest.json").read_text())
    manifest["shards"] = manifest["shards"][::-1]
    (latents / "manifest.json").write_text(json.dumps(manifest))
    shuffled = open_store(latents)
    assert shuffled.keys()[0] != open_store(stores / "images").keys()[0]
    plain = StoreDataset(stores / "images", stores / "latents")
    joined = StoreDataset(stores / "images", shuffled)
    for index in range(8):
        torch.testing.assert_close(joined[index]["moments"], plain[index]["moments"])


def test_bad_arguments(stores):
    with pytest.raises(IrepaError, match="needs an image store, a latent store, or both"):
        StoreDataset()
    with pytest.raises(IrepaError, match="is a latents store, expected a images store"):
        StoreDataset(open_store(stores / "latents"))
    with pytest.raises(IrepaError, match="masks were requested but image store"):
        StoreDataset(stores / "images", masks=True)
    with pytest.raises(IrepaError, match="does not exist"):
        StoreDataset(stores / "nope")
