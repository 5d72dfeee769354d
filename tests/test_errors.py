"""rvq_cli.errors.option: the library names its parameters, the rvq command its flags."""

import pytest
from typer.testing import CliRunner

from rvq_cli import errors
from rvq_cli.errors import name_options_as_flags, option
from rvq_cli.tokens import decode_dataset
from rvq_cli.tokens.format import TokenError


@pytest.fixture(autouse=True)
def python_naming():
    """Every test starts and ends with the library's own naming (as Python callers get it)."""
    name_options_as_flags(False)
    yield
    name_options_as_flags(False)


def test_option_names_the_parameter_from_python_and_the_flag_in_the_command():
    assert option("batch_size") == "batch_size"
    assert option("fvd=False", flag="--no-fvd") == "fvd=False"
    name_options_as_flags(True)
    assert option("batch_size") == "--batch-size"
    assert option("fvd=False", flag="--no-fvd") == "--no-fvd"
    name_options_as_flags(False)
    assert option("batch_size") == "batch_size"


def test_a_library_error_names_the_parameter_when_called_from_python(tmp_path):
    with pytest.raises(TokenError, match=r"^batch_size must be at least 1, got 0\."):
        decode_dataset(tmp_path / "run", tmp_path / "tokens", tmp_path / "out", batch_size=0)


def test_the_same_error_names_the_flag_in_a_cli_run_and_python_naming_returns_after(tmp_path):
    from rvq_cli.cli import app

    res = CliRunner().invoke(app, ["decode", str(tmp_path / "run"), str(tmp_path / "tokens"), str(tmp_path / "out"),
                                   "--batch-size", "0"])
    assert isinstance(res.exception, TokenError), res.output
    assert str(res.exception).startswith("--batch-size must be at least 1, got 0."), res.exception
    assert not errors._AS_FLAGS and option("batch_size") == "batch_size"  # the command turned it off at its end


def test_messages_say_object_reprs_in_words():
    """PIL names the BytesIO it could not read (``<_io.BytesIO object at 0x…>``); a user message
    never shows that."""
    import io

    from PIL import Image, UnidentifiedImageError

    from rvq_cli.errors import describe

    try:
        Image.open(io.BytesIO(b"not an image"))
    except UnidentifiedImageError as exn:
        assert "object at 0x" in str(exn)  # what PIL says
        text = describe(exn)
    assert text == "UnidentifiedImageError: cannot identify image file the data", text
    assert describe(ValueError("a\nb")) == "ValueError: a b" and describe(KeyError()) == "KeyError"
