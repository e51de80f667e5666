import json

import numpy as np
import pytest
from PIL import Image

from irepa.data.store import open_store


def _folder(root, per_class=3):
    rng = np.random.default_rng(0)
    for c in ("cat", "dog"):
        (root / c).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            Image.fromarray(rng.integers(0, 256, (20, 24, 3), dtype=np.uint8)).save(root / c / f"{i}.png")
    return root


@pytest.fixture(scope="module")
def vae_dir(tmp_path_factory):
    from irepa.data.vae import save_random_vae

    return save_random_vae(tmp_path_factory.mktemp("cli-vae") / "vae")


def test_help_of_every_subcommand(run_cli):
    for sub in ("prepare", "encode", "info"):
        res = run_cli("data", sub, "--help")
        assert res.code == 0 and f"irepa data {sub}" in res.out
    res = run_cli("data", "prepare", "--help")
    assert "--on-error" in res.out and "ADM" in res.out.replace("\n", " ")


def test_prepare_encode_info_verify(run_cli, tmp_path, vae_dir):
    root = _folder(tmp_path / "imgs")
    res = run_cli(
        "data",
        "prepare",
        "--images",
        root,
        "--resolution",
        16,
        "--out",
        tmp_path / "st",
        "--shard-size",
        4,
        "--workers",
        1,
    )
    assert res.code == 0, res
    assert "complete, 6 records" in res.out and "2 shards written" in res.out
    res = run_cli(
        "data",
        "prepare",
        "--images",
        root,
        "--resolution",
        16,
        "--out",
        tmp_path / "st",
        "--shard-size",
        4,
        "--workers",
        1,
    )
    assert res.code == 0 and "already complete" in res.out
    res = run_cli(
        "data",
        "encode",
        "--store",
        tmp_path / "st",
        "--out",
        tmp_path / "lat",
        "--vae-weights",
        vae_dir,
        "--flip",
        "--dtype",
        "float16",
        "--batch-size",
        4,
        "--offline",
    )
    assert res.code == 0, res
    assert "complete, 6 records" in res.out
    manifest = open_store(tmp_path / "lat").manifest
    assert manifest["vae"]["id"] == "stabilityai/sd-vae-ft-mse" and manifest["dtype"] == "float16"
    assert manifest["flip"] == "also-flipped"
    res = run_cli("data", "info", tmp_path / "lat", "--verify")
    assert res.code == 0, res
    assert "latents store" in res.out and "6 records in 2 shards" in res.out and "flip policy also-flipped" in res.out
    assert "channel std" in res.out and "verified" in res.out
    res = run_cli("data", "info", tmp_path / "st", "--json")
    assert res.code == 0 and json.loads(res.out)["class_names"] == ["cat", "dog"]
    # Corrupt one shard in place (same size): --verify fails with exit 2 and names it.
    shard = tmp_path / "st" / "shard-00001.images.npy"
    data = bytearray(shard.read_bytes())
    data[-1] ^= 1
    shard.write_bytes(bytes(data))
    res = run_cli("data", "info", tmp_path / "st", "--verify")
    assert res.code == 2 and "shard-00001" in res.err and "failed verification" in res.err


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["prepare", "--images", "{tmp}/nope", "--resolution", "16", "--out", "{tmp}/o"], "does not exist"),
        (["prepare", "--images", "{tmp}", "--out", "{tmp}/o"], "--resolution is required with --images"),
        (["prepare", "--images", "{tmp}", "--resolution", "16", "--out", "{tmp}/o", "--workers", "0"], "--workers 0"),
        (["encode", "--store", "{tmp}/nope", "--out", "{tmp}/l"], "images store '.*nope' does not exist"),
        (["info", "{tmp}/nope"], "data store '.*nope' does not exist"),
    ],
)
def test_bad_input_exits_2_with_one_line(run_cli, tmp_path, args, message):
    import re

    res = run_cli("data", *[a.format(tmp=tmp_path) for a in args])
    assert res.code == 2, res
    lines = [line for line in res.err.splitlines() if line.strip()]
    assert len(lines) == 1 and re.search(message, lines[0]), res.err
    assert not (tmp_path / "o").exists()


def test_encode_missing_vae_offline(run_cli, tmp_path):
    root = _folder(tmp_path / "imgs", per_class=1)
    assert run_cli("data", "prepare", "--images", root, "--resolution", 16, "--out", tmp_path / "st").code == 0
    res = run_cli(
        "data",
        "encode",
        "--store",
        tmp_path / "st",
        "--out",
        tmp_path / "lat",
        "--offline",
        "--cache-dir",
        tmp_path / "hf",
    )
    assert res.code == 2
    assert "VAE 'stabilityai/sd-vae-ft-mse'" in res.err and "--vae-weights" in res.err
    assert not (tmp_path / "lat").exists()


def test_prepare_with_worker_processes_in_a_real_process(run_cli_subprocess, tmp_path):
    root = _folder(tmp_path / "imgs")
    (root / "dog" / "broken.png").write_bytes(b"nope")
    res = run_cli_subprocess(
        "data",
        "prepare",
        "--images",
        root,
        "--resolution",
        16,
        "--out",
        tmp_path / "st",
        "--shard-size",
        2,
        "--workers",
        2,
    )
    assert res.code == 0, res
    assert "complete, 6 records" in res.out and "1 unreadable skipped" in res.out
    store = open_store(tmp_path / "st")
    assert store.manifest["skipped"]["keys"] == ["dog/broken"] and len(store.manifest["shards"]) == 4
    # Output bytes do not depend on the number of worker processes.
    from irepa.data.prepare import prepare_folder_store

    prepare_folder_store(root, tmp_path / "one", resolution=16, shard_size=2, workers=1)
    assert open_store(tmp_path / "one").fingerprint == store.fingerprint


def test_prepare_synthetic(run_cli, tmp_path):
    res = run_cli(
        "data",
        "prepare",
        "--synthetic",
        20,
        "--num-classes",
        4,
        "--seed",
        1,
        "--resolution",
        16,
        "--out",
        tmp_path / "s",
        "--shard-size",
        8,
        "--workers",
        1,
    )
    assert res.code == 0, res
    assert "complete, 20 records" in res.out
    store = open_store(tmp_path / "s")
    assert store.has_field("masks") and store.num_classes == 4 and store.manifest["source"]["seed"] == 1
    res = run_cli("data", "info", tmp_path / "s")
    assert res.code == 0 and "masks bool [16, 16]" in res.out


def test_make_vae_writes_a_loadable_tiny_random_vae(run_cli, tmp_path):
    from irepa.data.vae import load_vae

    out = tmp_path / "vae"
    res = run_cli("data", "make-vae", out, "--seed", "3")
    assert res.code == 0 and f"written to {out}" in res.out, res
    vae = load_vae(str(out))
    assert vae is not None and (out / "config.json").is_file()
    res = run_cli("data", "make-vae", out)
    assert res.code == 2 and "--force" in res.err
    assert run_cli("data", "make-vae", out, "--force").code == 0


@pytest.mark.parametrize("kind", ["dns", "dropped"])
def test_encode_without_network_fails_fast_with_the_offline_fix(run_cli, tmp_path, no_network, kind):
    """A VAE that is not cached, no --offline, no network: a one-line error in seconds, not after the Hub's retries."""
    import time

    root = _folder(tmp_path / "imgs", per_class=1)
    assert run_cli("data", "prepare", "--images", root, "--resolution", 16, "--out", tmp_path / "st").code == 0
    waited = no_network(kind)
    start = time.perf_counter()
    res = run_cli(
        "data", "encode", "--store", tmp_path / "st", "--out", tmp_path / "lat", "--cache-dir", tmp_path / "hf"
    )
    seconds = time.perf_counter() - start + waited()
    assert res.code == 2, res
    assert seconds < 10, f"{seconds:.0f} s (of which {waited():.0f} s connect timeouts and retry sleeps)"
    assert len(res.err.strip().splitlines()) == 1, res.err
    assert "no network: cannot reach" in res.err and "VAE 'stabilityai/sd-vae-ft-mse' is not in" in res.err
    assert "huggingface-cli download stabilityai/sd-vae-ft-mse" in res.err and "--vae-weights" in res.err
    assert "--offline" in res.err
    assert not (tmp_path / "lat").exists()


def test_a_cached_hub_vae_loads_without_asking_the_hub(tmp_path, no_network):
    """The Hugging Face cache is read first: no network needed (and no retries spent) when the VAE is there."""
    from irepa.data.vae import load_vae, save_random_vae

    cache = tmp_path / "hf-cache"
    repo = cache / "models--someone--tiny-vae"
    save_random_vae(repo / "snapshots" / "0123456789abcdef0123456789abcdef01234567")
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text("0123456789abcdef0123456789abcdef01234567")
    waited = no_network("dropped")
    vae = load_vae("someone/tiny-vae", cache_dir=cache)
    # At most huggingface_hub's own one-off 3-s fetch of its user-agent registry (asking the Hub first: 516 s).
    assert vae.name == "someone/tiny-vae" and waited() <= 3.0, waited()
