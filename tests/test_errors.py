import pytest

from irepa.errors import IrepaError, first_line


def test_first_line_quotes_the_first_line_of_a_multiline_message():
    assert first_line(RuntimeError("\n  bad header\nTraceback ...\n")) == "bad header"


def test_first_line_falls_back_to_the_type_name():
    assert first_line(KeyError()) == "KeyError"
    assert first_line(OSError("  \n ")) == "OSError"


def test_first_line_cuts_long_lines():
    assert first_line(ValueError("x" * 500), max_chars=200) == "x" * 200
    assert first_line(ValueError("x" * 500)) == "x" * 500


def test_a_read_failure_quotes_one_line(tmp_path):
    from irepa.utils.io import load_tensor_file

    bad = tmp_path / "f.npy"
    bad.write_bytes(b"\x93NUMPY garbage")
    with pytest.raises(IrepaError, match=r"^cannot read features file .*: \S"):
        load_tensor_file(bad)
