import pytest

from irepa.errors import IrepaError, UnknownNameError
from irepa.registry import Registry


def test_register_get_list_and_aliases():
    reg: Registry[int] = Registry("widget")
    reg.register("alpha", 1)

    @reg.register("beta", aliases=("b",))
    def beta():
        return 2

    assert reg.get("alpha") == 1
    assert reg.get("b") is beta
    assert reg.list() == ["alpha", "beta"]
    assert reg.list("a*") == ["alpha"]
    assert "b" in reg and "gamma" not in reg
    assert len(reg) == 2


def test_unknown_name_suggests_close_matches():
    reg: Registry[int] = Registry("encoder")
    for name in ("dinov2-vit-b", "dinov2-vit-l", "clip-vit-L"):
        reg.register(name, 0)
    with pytest.raises(UnknownNameError, match=r"unknown encoder 'dinov2-vit-bb'; did you mean 'dinov2-vit-b'"):
        reg.get("dinov2-vit-bb")
    with pytest.raises(IrepaError):  # also an IrepaError (one-line CLI message) and a KeyError
        reg.get("nothing-like-it")
    with pytest.raises(KeyError):
        reg.get("zzz")


def test_duplicate_registration_is_an_error():
    reg: Registry[int] = Registry("thing")
    reg.register("x", 1, aliases=("y",))
    with pytest.raises(ValueError, match="already registered"):
        reg.register("x", 2)
    with pytest.raises(ValueError, match="already registered"):
        reg.register("y", 2)


def test_unregister_removes_the_entry_and_its_aliases():
    reg: Registry[int] = Registry("thing")
    reg.register("x", 1, aliases=("y", "z"))
    reg.register("w", 2)
    assert reg.unregister("y") == 1  # an alias names its entry
    assert "x" not in reg and "y" not in reg and "z" not in reg and reg.list() == ["w"]
    reg.register("x", 3, aliases=("y",))  # the names are free again
    assert reg.get("y") == 3
    with pytest.raises(UnknownNameError):
        reg.unregister("nothing")
