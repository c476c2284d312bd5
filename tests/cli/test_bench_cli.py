"""`actlab bench`'s weight-format, engine and llama.cpp options: refused before any model loads."""

import pytest
from typer.testing import CliRunner

from actlab.cli.main import app

runner = CliRunner()
BASE = ["bench", "-m", "random:tiny-llama", "--method", "teal", "-s", "0.5"]


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--weights", "int3"], "--weights"),
        (["--engine", "jit"], "--engine"),
        (["--against", "onnx"], "--against"),
        (["--gguf", "x.gguf"], "--gguf needs --against llamacpp"),
        (["--against", "llamacpp", "--gguf", "missing.gguf"], "no such file"),
    ],
)
def test_bad_options_give_one_error_line(extra, message):
    res = runner.invoke(app, [*BASE, *extra])
    assert res.exit_code == 2
    assert "Traceback" not in res.output
    assert res.output.lstrip().startswith("error:") and message in res.output


def test_the_choices_are_named():
    res = runner.invoke(app, [*BASE, "--weights", "int3"])
    assert all(fmt in res.output for fmt in ("fp32", "bf16", "int8", "int4"))
