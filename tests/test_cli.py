import subprocess
import sys


def test_help_does_not_import_torch():
    code = (
        "import sys; from gptkit.cli import main; sys.argv = ['gptkit', '--help'];\n"
        "try: main()\nexcept SystemExit: pass\n"
        "heavy = [m for m in ('torch', 'transformers', 'huggingface_hub', 'numpy') if m in sys.modules]\n"
        "assert not heavy, heavy"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert "train" in result.stdout and "inspect" in result.stdout


def test_python_dash_m():
    result = subprocess.run([sys.executable, "-m", "gptkit", "--help"], capture_output=True, text=True)
    assert result.returncode == 0 and "download" in result.stdout
