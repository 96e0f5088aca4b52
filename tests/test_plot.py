import io
import json
import math
import subprocess
import sys

import pytest
from conftest import assert_one_line_error
from rich.console import Console
from typer.testing import CliRunner

from gptkit.cli import app
from gptkit.commands.plot import COLOURS, draw, load_curves, smooth


def write_run(folder, steps=200, start=10.0, end=3.0, eval_every=50, cut_last_line=False):
    """A run folder with a metrics.jsonl like gptkit train's: a noisy decaying loss, validation every eval_every."""
    folder.mkdir(parents=True)
    lines = []
    for step in range(1, steps + 1):
        loss = end + (start - end) * math.exp(-step / 40) + 0.2 * math.sin(step * 1.7)
        record = {
            "step": step,
            "loss": loss,
            "lr": 6e-4,
            "grad_norm": 1.0,
            "tokens_seen": step * 1024,
            "tokens_per_s": 2000.0,
            "step_time_s": 0.5,
        }
        if step % eval_every == 0:
            record["val_loss"] = loss + 0.3
        lines.append(json.dumps(record))
    text = "\n".join(lines) + "\n"
    if cut_last_line:
        text += lines[-1][:25]
    (folder / "metrics.jsonl").write_text(text)
    return folder


def invoke(*args, env=None):
    return CliRunner().invoke(app, ["plot", *map(str, args)], env=env)


def test_smoothing_is_a_debiased_moving_average():
    assert smooth([4.0, 4.0, 4.0], 0.9) == pytest.approx([4.0, 4.0, 4.0])
    assert smooth([1.0, 3.0], 0.5) == pytest.approx([1.0, (0.25 + 1.5) / 0.75])
    assert smooth([1.0, 3.0], 0.0) == [1.0, 3.0]


def test_curves_against_steps_tokens_and_time(tmp_path):
    run = write_run(tmp_path / "a", steps=100)
    by_step, by_tokens, by_time = (load_curves(run, x, 0.9, print) for x in ("step", "tokens", "time"))
    assert by_step.name == "a" and by_step.x[:3] == [1, 2, 3] and by_step.val_x == [50, 100]
    assert by_tokens.x[-1] == 100 * 1024 and by_tokens.val_x == [50 * 1024, 100 * 1024]
    assert by_time.x[-1] == pytest.approx(50.0) and len(by_step.val_loss) == 2


def test_png_of_two_runs_has_both_colours(tmp_path):
    import matplotlib.image

    a, b = write_run(tmp_path / "small"), write_run(tmp_path / "big", start=11.0, end=2.0)
    out = tmp_path / "curves.png"
    result = invoke(a, b, "--out", out, "--log")
    assert result.exit_code == 0 and f"wrote {out}" in result.output, result.output
    pixels = matplotlib.image.imread(out)
    assert pixels.shape[:2] == (450, 800)
    rgb = {tuple(round(float(c) * 255) for c in p[:3]) for row in pixels[::2] for p in row[::2]}
    for colour in COLOURS[:2]:  # each run's line is drawn in its own colour
        r, g, b = (int(colour[i : i + 2], 16) for i in (1, 3, 5))
        assert any(abs(p[0] - r) + abs(p[1] - g) + abs(p[2] - b) < 12 for p in rgb), colour
    assert not list(tmp_path.glob("*.tmp*")) and not list(tmp_path.glob(".*"))


def test_svg_and_pdf_by_extension(tmp_path):
    run = write_run(tmp_path / "run")
    for name, start in (("curves.svg", b"<?xml"), ("curves.pdf", b"%PDF")):
        result = invoke(run, "--out", tmp_path / name, "--x", "tokens")
        assert result.exit_code == 0, result.output
        assert (tmp_path / name).read_bytes().startswith(start)


def test_terminal_plot_fits_the_width_and_names_the_runs(tmp_path):
    a, b = write_run(tmp_path / "run-one"), write_run(tmp_path / "run-two", start=8.0, end=4.0)
    console = Console(file=io.StringIO(), width=72, color_system=None)
    draw([a, b], None, "time", False, 0.9, console, print)
    lines = console.file.getvalue().splitlines()
    assert all(len(line) <= 72 for line in lines), max(map(len, lines))
    assert len(lines) == 16 + 5 and "run-one: best val" in lines[-3] and "run-two: best val" in lines[-2]
    plotted = "".join(lines[:16])
    assert sum(0x2800 < ord(ch) <= 0x28FF for ch in plotted) > 100  # the curves, in braille dots
    assert plotted.count("●") >= 4  # the validation points
    assert "training time (s)" in lines[-4] and lines[0].strip().startswith("10")


def test_the_legend_says_where_a_run_reached_its_target_or_its_best_val(tmp_path):
    run = write_run(tmp_path / "target", steps=100)
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    records[49]["target_reached"] = {"target_loss": 4.5, "step": 50, "tokens_seen": 51200, "wall_time_s": 31.6}
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    assert load_curves(run, "step", 0.9, print).outcome == "val <= 4.5 at step 50, 51,200 tokens, 32 s"
    best = min((r["val_loss"], r["step"]) for r in records if "val_loss" in r)
    plain = load_curves(write_run(tmp_path / "plain", steps=100), "step", 0.9, print)
    assert plain.outcome == f"best val {best[0]:.3f} at step {best[1]}"
    console = Console(file=io.StringIO(), width=100, color_system=None)
    draw([run], None, "step", False, 0.9, console, print)
    assert "target: val <= 4.5 at step 50, 51,200 tokens, 32 s" in console.file.getvalue().splitlines()[-2]


def test_terminal_plot_through_the_cli_takes_the_terminal_width(tmp_path):
    run = write_run(tmp_path / "run")
    for columns in (50, 120):
        result = invoke(run, "--log", env={"COLUMNS": str(columns)})
        assert result.exit_code == 0, result.output
        lines = result.output.splitlines()
        assert max(map(len, lines)) <= columns and max(map(len, lines[:16])) >= columns - 2
        assert "log scale" in lines[-1]


def test_a_line_cut_short_is_skipped_with_a_warning(tmp_path):
    run = write_run(tmp_path / "run", steps=60, cut_last_line=True)
    result = invoke(run)
    assert result.exit_code == 0 and "warning:" in result.output, result.output
    assert "skipped 1 unreadable line(s)" in result.output


def test_bad_inputs(tmp_path):
    run = write_run(tmp_path / "run")
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "metrics.jsonl").write_text("")
    (tmp_path / "taken.png").mkdir()  # a folder where the file should go
    cases = [
        ([tmp_path / "nowhere"], "does not exist"),
        ([tmp_path], "not a run folder"),
        ([tmp_path / "empty"], "holds no training steps"),
        ([run, "--x", "epochs"], "unknown --x 'epochs'"),
        ([run, "--smooth", "1"], "--smooth"),
        ([run, "--out", tmp_path / "curves.jpg"], ".png, .svg or .pdf"),
        ([run, "--out", tmp_path / "missing" / "curves.png"], "does not exist"),
        ([run, "--out", tmp_path / "taken.png"], "cannot write"),
    ]
    for args, message in cases:
        result = invoke(*args)
        assert_one_line_error(result, message)
        assert result.stdout == ""
    assert (tmp_path / "taken.png").is_dir() and not (tmp_path / "missing").exists()


def test_a_file_without_matplotlib_says_how_to_get_it(tmp_path, monkeypatch):
    run = write_run(tmp_path / "run")
    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)  # as if not installed
    assert_one_line_error(invoke(run, "--out", tmp_path / "curves.png"), "pip install 'gptkit[plot]'")
    assert not (tmp_path / "curves.png").exists()
    assert invoke(run).exit_code == 0  # the terminal plot needs no matplotlib


def test_plot_does_not_import_torch(tmp_path):
    run = write_run(tmp_path / "run")
    code = (
        "import sys; from gptkit.cli import main; sys.argv = ['gptkit', 'plot', sys.argv[1]];\n"
        "try: main()\nexcept SystemExit as e: assert not e.code, e.code\n"
        "assert 'torch' not in sys.modules, 'torch was imported'"
    )
    subprocess.run([sys.executable, "-c", code, str(run)], check=True, capture_output=True)


def test_tick_labels_stay_short():
    from gptkit.commands.plot import short_number

    assert [short_number(v) for v in (150, 38400, 1.2e6, 10.85, 0.005)] == ["150", "38.4k", "1.2M", "10.85", "5.0e-03"]
