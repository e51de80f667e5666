"""Fixtures shared by the CLI tests: the CI preset's stores, made once per test session (per xdist worker)."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def ci_stores(tmp_path_factory):
    """A 32-image synthetic store at 64 px and its latents from a tiny random VAE, made with the real CLI."""
    from irepa.cli.main import main
    from irepa.data.vae import save_random_vae

    root = tmp_path_factory.mktemp("ci")
    vae = save_random_vae(root / "vae")
    assert (
        main(
            [
                "data",
                "prepare",
                "--synthetic",
                "32",
                "--num-classes",
                "4",
                "--resolution",
                "64",
                "--out",
                str(root / "images"),
                "--quiet",
            ]
        )
        == 0
    )
    assert (
        main(
            [
                "data",
                "encode",
                "--store",
                str(root / "images"),
                "--vae",
                str(vae),
                "--out",
                str(root / "latents"),
                "--batch-size",
                "16",
                "--quiet",
            ]
        )
        == 0
    )
    return [f"data.images={root / 'images'}", f"data.latents={root / 'latents'}"]


@pytest.fixture(scope="session")
def ci_vae(ci_stores):
    """The tiny random VAE folder the CI latents were encoded with (written by ``ci_stores``)."""
    return Path(ci_stores[0].split("=", 1)[1]).parent / "vae"


@pytest.fixture
def no_network(monkeypatch, tmp_path):
    """A machine without network, in virtual time: every TCP connect fails, either at once (``dns``: the name
    does not resolve) or after its connect timeout (``dropped``: a firewall drops the packets), and sleeping
    between retries costs no real time. Returns ``set_kind(kind) -> virtual_seconds()``: seconds waited on connect
    timeouts and retry sleeps."""
    import socket
    import time

    import huggingface_hub.constants

    virtual = [0.0]
    kind = ["dns"]

    def connect(address, timeout=None, *args, **kwargs):
        if kind[0] == "dns":
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        virtual[0] += timeout if timeout is not None else 120.0  # the OS's own connect timeout, roughly
        raise TimeoutError("timed out")

    monkeypatch.setattr(socket, "create_connection", connect)
    monkeypatch.setattr(time, "sleep", lambda seconds: virtual.__setitem__(0, virtual[0] + seconds))
    for var in ("HF_HUB_OFFLINE", "IREPA_OFFLINE", "TRANSFORMERS_OFFLINE"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)  # conftest turned it on at import
    for var, folder in (("IREPA_CACHE", "irepa"), ("HF_HUB_CACHE", "hf"), ("TORCH_HOME", "torch")):
        monkeypatch.setenv(var, str(tmp_path / folder))

    def set_kind(new_kind):
        kind[0], virtual[0] = new_kind, 0.0
        return lambda: virtual[0]

    return set_kind
