import json
import subprocess
import sys

from typer.testing import CliRunner

from gptkit.cli import app
from gptkit.commands.inspect import group_tensors, inspect_checkpoint

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
        "import sys; from gptkit.cli import main; code = 0; sys.argv = ['gptkit', 'inspect', sys.argv[1]]\n"
        "try: main()\nexcept SystemExit as e: code = e.code\n"
        "print('torch imported' if 'torch' in sys.modules else 'torch not imported'); sys.exit(code)"
    )
    result = subprocess.run(
        [sys.executable, "-c", code, str(tiny_checkpoint)], check=False, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr
    assert "h.[0-1].attn.c_attn.weight" in result.stdout and "gptkit metadata" in result.stdout
    assert result.stdout.rstrip().endswith("torch not imported")


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


def test_inspect_a_run_folder_shows_its_loss_curve_and_nested_metadata(tiny_model, tmp_path):
    from gptkit.checkpoint.folder import save_checkpoint

    run = save_checkpoint(
        tiny_model,
        tmp_path / "run",
        {"step": 40, "data": {"path": "data/input.txt", "tokens": 338025}, "settings": {"lr": 0.0006, "seed": 1}},
    )
    lines = [
        json.dumps({"step": s, "loss": 10 - s / 10} | ({"val_loss": 7.5} if s == 40 else {})) for s in range(1, 41)
    ]
    (run / "metrics.jsonl").write_text("\n".join(lines) + '\n{"step": 41, "lo')  # the last line cut by a crash
    result = runner.invoke(app, ["inspect", str(run)])
    assert result.exit_code == 0, result.output
    curve = next(line for line in result.output.splitlines() if line.startswith("loss "))
    spark = curve.split()[1]
    levels = ["▁▂▃▄▅▆▇█".index(ch) for ch in spark]
    assert len(spark) == 40 and levels[0] == 7 and levels[-1] == 0 and levels == sorted(levels, reverse=True)
    assert "9.9000 -> 6.0000" in curve and "steps 1-40, val 7.5000" in curve
    assert "1 unreadable line(s) of metrics.jsonl skipped" in result.output
    rows = result.output.splitlines()
    data = rows.index(next(r for r in rows if r.strip() == "data"))
    assert rows[data + 1].split() == ["path", "data/input.txt"] and rows[data + 1].startswith("  path")
    assert any(r.split() == ["lr", "0.0006"] and r.startswith("  lr") for r in rows)

    info = json.loads(runner.invoke(app, ["inspect", str(run), "--json"]).output)
    assert info["metadata"]["settings"] == {"lr": 0.0006, "seed": 1}  # the JSON keeps the metadata as it is
    assert info["metrics"] | {"loss_sparkline": None} == {
        "records": 40,
        "skipped_lines": 1,
        "first_step": 1,
        "last_step": 40,
        "first_loss": 9.9,
        "last_loss": 6.0,
        "min_loss": 6.0,
        "last_val_loss": 7.5,
        "loss_sparkline": None,
    }
    assert len(info["metrics"]["loss_sparkline"]) == 40
    assert {"path", "config", "parameters", "size_on_disk", "dtypes", "tensor_count", "tensors"} <= info.keys()
