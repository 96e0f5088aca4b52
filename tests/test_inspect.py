import json
import subprocess
import sys

from typer.testing import CliRunner

from gptkit.cli import app
from gptkit.inspect import group_tensors, inspect_checkpoint

runner = CliRunner()


def test_inspect_summary(tiny_model, tiny_checkpoint):
    info = inspect_checkpoint(tiny_checkpoint)
    assert info["parameters"]["total"] == tiny_model.num_params()
    assert info["parameters"]["non_embedding"] == tiny_model.num_params(non_embedding=True)
    assert info["config"]["n_layer"] == 2 and info["dtypes"] == {"F32": info["tensor_count"]}
    assert info["metadata"]["note"] == "test fixture"
    assert info["size_on_disk"] > 4 * tiny_model.num_params()


def test_inspect_cli_table_and_json(tiny_checkpoint):
    result = runner.invoke(app, ["inspect", str(tiny_checkpoint)])
    assert result.exit_code == 0, result.output
    assert "h.[0-1].attn.c_attn.weight" in result.output and "gptkit metadata" in result.output
    result = runner.invoke(app, ["inspect", str(tiny_checkpoint), "--json"])
    assert result.exit_code == 0
    assert json.loads(result.output)["parameters"]["total"] > 0


def test_layers_are_grouped():
    tensors = [{"name": f"h.{i}.ln_1.weight", "shape": [8], "dtype": "F32"} for i in range(48)]
    tensors.insert(0, {"name": "wte.weight", "shape": [10, 8], "dtype": "F32"})
    rows = group_tensors(tensors)
    assert [(r["name"], r["count"]) for r in rows] == [("wte.weight", 1), ("h.[0-47].ln_1.weight", 48)]


def test_inspect_does_not_import_torch(tiny_checkpoint):
    code = (
        "import sys; from gptkit.cli import main; sys.argv = ['gptkit', 'inspect', sys.argv[1]];\n"
        "try: main()\nexcept SystemExit: pass\nassert 'torch' not in sys.modules, 'torch was imported'"
    )
    subprocess.run([sys.executable, "-c", code, str(tiny_checkpoint)], check=True, capture_output=True)


def test_inspect_bad_files(tmp_path, tiny_checkpoint):
    cases = {
        "missing": tmp_path / "nope",
        "not a checkpoint": tmp_path,
    }
    truncated = tiny_checkpoint / "model.safetensors"
    truncated.write_bytes(truncated.read_bytes()[:1000])
    cases["truncated"] = tiny_checkpoint
    garbage = tmp_path / "garbage.safetensors"
    garbage.write_bytes(b"this is not a safetensors file at all")
    cases["garbage"] = garbage
    for what, path in cases.items():
        result = runner.invoke(app, ["inspect", str(path)])
        assert result.exit_code == 1, what
        assert result.output.startswith("error:") and "Traceback" not in result.output, what
        assert len(result.output.strip().splitlines()) == 1, result.output
