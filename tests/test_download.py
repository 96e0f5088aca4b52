"""`gptkit download` against a local stand-in for the Hugging Face hub (tests/hub_server.py)."""

import errno
import os
import re
import shutil
import socket
import subprocess
import sys
import time
from collections import namedtuple
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from safetensors.torch import load_file, save_file

from gptkit.checkpoint import hub, hub_transfer
from gptkit.checkpoint.folder import load_checkpoint, read_config, read_metadata
from gptkit.checkpoint.locate import is_checkpoint
from gptkit.errors import GptkitError
from gptkit.commands.inspect import inspect_checkpoint
from gptkit.checkpoint.tokenizer_files import TOKENIZER_FILES, file_bytes
from tests.hub_server import RESET, STALL, HubServer

NEEDED = {"config.json", "model.safetensors"}
GATED_TOKEN = "hf_token_of_an_account_that_accepted_the_conditions"
# Environment variables a test's hub client must not inherit: tokens, offline mode, proxies (only loopback is used).
NOT_INHERITED = (
    "HF_TOKEN",
    "HUGGING_FACE_HUB_TOKEN",
    "HF_HUB_OFFLINE",
    *(f"{name}_PROXY" for name in ("HTTP", "HTTPS", "ALL")),
    *(f"{name}_proxy" for name in ("http", "https", "all")),
)
CHUNK = 1 << 16
DROP_AT = 32 * CHUNK  # a whole number of chunks: what the client has read is all written to disk
DECOYS = ("tf_model.h5", "flax_model.msgpack", "rust_model.ot", "onnx/decoder_model.onnx", "64-8bits.tflite")


@pytest.fixture(scope="module")
def repo_files(tmp_path_factory):
    """Files of the served repos: a tiny random GPT-2 laid out like openai-community/gpt2, decoys, a BERT config."""
    from transformers import GPT2Config, GPT2LMHeadModel

    root = tmp_path_factory.mktemp("hub")
    torch.manual_seed(0)
    config = GPT2Config(n_layer=2, n_head=2, n_embd=32, n_positions=64, vocab_size=50257)
    GPT2LMHeadModel(config).save_pretrained(root / "hf")
    # openai-community/gpt2 stores its tensors without the "transformer." prefix, and the causal-mask buffers too.
    state = {k.removeprefix("transformer."): v for k, v in load_file(root / "hf" / "model.safetensors").items()}
    state.pop("lm_head.weight", None)
    for i in range(config.n_layer):
        state[f"h.{i}.attn.bias"] = torch.tril(torch.ones(64, 64)).view(1, 1, 64, 64)
    gpt2 = root / "gpt2"
    (gpt2 / "onnx").mkdir(parents=True)
    shutil.copy(root / "hf" / "config.json", gpt2 / "config.json")
    save_file(state, gpt2 / "model.safetensors", metadata={"format": "pt"})
    torch.save(state, gpt2 / "pytorch_model.bin")
    for name in DECOYS:
        (gpt2 / name).write_bytes(os.urandom(3 << 20))
    (gpt2 / "vocab.json").write_text("{}")
    bert = root / "bert"
    bert.mkdir()
    (bert / "config.json").write_text('{"model_type": "bert", "hidden_size": 768}')
    return {"gpt2": gpt2, "bert": bert}


@pytest.fixture(scope="module")
def server(repo_files):
    gpt2, bert = repo_files["gpt2"], repo_files["bert"]
    everything = {str(p.relative_to(gpt2)): p for p in gpt2.rglob("*") if p.is_file()}
    s = HubServer()
    s.add_repo("openai-community/gpt2", everything)
    s.add_repo("someone/gpt2-bin", {k: v for k, v in everything.items() if k != "model.safetensors"})
    s.add_repo("google-bert/bert-base-uncased", {"config.json": bert / "config.json", **{d: gpt2 / d for d in DECOYS}})
    s.add_repo("someone/gated-gpt2", everything, token=GATED_TOKEN)
    yield s
    s.close()


@pytest.fixture(autouse=True)
def hub_env(server, tmp_path, monkeypatch):
    """Each test: a fresh hub cache, the server's endpoint, no token, online, no proxy, an empty request log."""
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hf-cache"))
    # http_get reads 10 MB at a time and loses what it holds of a chunk when the connection drops: small chunks make
    # what reaches the disk before a drop exact.
    monkeypatch.setattr(huggingface_hub.constants, "DOWNLOAD_CHUNK_SIZE", CHUNK)
    # Telemetry off: huggingface_hub's user agent would fetch {endpoint}/api/agent-harnesses, in this process from
    # the endpoint read at its import, huggingface.co.
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_DISABLE_TELEMETRY", True)
    monkeypatch.setenv("HF_ENDPOINT", server.url)
    for name in NOT_INHERITED:
        monkeypatch.delenv(name, raising=False)
    server.reset()


def needed_bytes(repo_files) -> int:
    return sum((repo_files["gpt2"] / f).stat().st_size for f in NEEDED)


def test_download_fetches_only_config_and_weights(server, repo_files, tmp_path):
    out = hub.download("gpt2", tmp_path / "gpt2")
    assert is_checkpoint(out)
    fetched = server.fetched()
    assert set(fetched) == NEEDED  # no decoy, no pytorch_model.bin, no tokenizer files
    assert all((out / name).read_bytes() == data for name, data in file_bytes().items())  # gptkit's own
    assert sum(fetched.values()) == needed_bytes(repo_files)
    assert (out / "model.safetensors").read_bytes() == (repo_files["gpt2"] / "model.safetensors").read_bytes()
    assert not list(out.glob(".*"))  # no partial files left
    source = read_metadata(out)["source"]
    assert source["repo"] == "openai-community/gpt2" and source["commit"] == server.repos[source["repo"]].commit
    assert read_config(out).n_embd == 32
    assert inspect_checkpoint(out)["config"]["n_layer"] == 2


def greedy(model, idx, steps):
    for _ in range(steps):
        logits, _ = model(idx, last_only=True)
        idx = torch.cat([idx, logits[:, -1].argmax(-1, keepdim=True)], dim=1)
    return idx


def test_parity_with_transformers(repo_files, tmp_path):
    from transformers import GPT2LMHeadModel

    out = hub.download("gpt2", tmp_path / "gpt2")
    model = load_checkpoint(out)
    reference = GPT2LMHeadModel.from_pretrained(repo_files["gpt2"]).eval()  # the served files, read by transformers
    idx = torch.randint(0, 50257, (2, 24), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        logits, _ = model(idx)
        torch.testing.assert_close(logits, reference(idx).logits, atol=1e-4, rtol=0)
        prompt = idx[:1, :8]
        expected = reference.generate(
            prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=24, do_sample=False, pad_token_id=50256
        )
        assert torch.equal(greedy(model, prompt, 24), expected)


def test_rerun_is_a_noop(server, tmp_path, capsys):
    out = hub.download("gpt2", tmp_path / "gpt2")
    server.reset()
    hub.download("gpt2", out)
    assert server.log == []  # not even a HEAD request
    assert "nothing to download" in capsys.readouterr().err


def test_rerun_writes_the_tokenizer_files_a_download_lacks(server, tmp_path):
    out = hub.download("gpt2", tmp_path / "gpt2")
    for name in TOKENIZER_FILES[::2]:  # as a download made before they were written
        (out / name).unlink()
    server.reset()
    hub.download("gpt2", out)
    assert server.log == []
    assert all((out / name).is_file() for name in TOKENIZER_FILES)


def test_resume_after_dropped_connection_within_one_run(server, repo_files, tmp_path):
    size = (repo_files["gpt2"] / "model.safetensors").stat().st_size
    server.drop_at["model.safetensors"] = DROP_AT
    out = hub.download("gpt2", tmp_path / "gpt2")
    assert is_checkpoint(out)
    assert server.fetched()["model.safetensors"] == size
    ranged = [r for r in server.log if r.method == "GET" and r.path == "model.safetensors" and r.range]
    assert [r.range for r in ranged] == [f"bytes={DROP_AT}-"]


def test_resume_in_the_next_run_after_the_hub_went_away(server, repo_files, tmp_path, no_waiting):
    size = (repo_files["gpt2"] / "model.safetensors").stat().st_size
    server.drop_at["model.safetensors"] = DROP_AT
    server.fail_after_drop = 503
    out = tmp_path / "gpt2"
    with pytest.raises(GptkitError, match=r"HTTP 503 for openai-community/gpt2: run again to resume \(2.1 MB kept\)"):
        hub.download("gpt2", out)
    assert not (out / "model.safetensors").exists() and not (out / "config.json").exists()
    assert [p.stat().st_size for p in out.glob(".model.safetensors.*.incomplete")] == [DROP_AT]

    server.reset()
    hub.download("gpt2", out)
    assert is_checkpoint(out)
    assert server.fetched() == {"model.safetensors": size - DROP_AT}  # config.json came from the hub cache
    assert (out / "model.safetensors").read_bytes() == (repo_files["gpt2"] / "model.safetensors").read_bytes()


def test_resume_after_ctrl_c(server, repo_files, tmp_path, monkeypatch):
    size = (repo_files["gpt2"] / "model.safetensors").stat().st_size
    update = hub_transfer.RichBar.update

    def interrupt(self, n=1):
        update(self, n)
        if self.progress.tasks[0].completed > size // 2:
            raise KeyboardInterrupt

    monkeypatch.setattr(hub_transfer.RichBar, "update", interrupt)
    out = tmp_path / "gpt2"
    with pytest.raises(KeyboardInterrupt):
        hub.download("gpt2", out)
    assert not is_checkpoint(out)
    (part,) = out.glob(".model.safetensors.*.incomplete")
    kept = part.stat().st_size
    assert size // 3 < kept < size

    monkeypatch.undo()
    monkeypatch.setenv("HF_ENDPOINT", server.url)
    server.reset()
    hub.download("gpt2", out)
    assert server.fetched()["model.safetensors"] == size - kept
    assert load_file(out / "model.safetensors").keys() == load_file(repo_files["gpt2"] / "model.safetensors").keys()


def test_repo_without_safetensors(server, repo_files, tmp_path):
    out = hub.download("someone/gpt2-bin", tmp_path / "out")
    assert set(server.fetched()) == {"config.json", "pytorch_model.bin"}
    assert not (out / "pytorch_model.bin").exists() and not list(out.glob(".*"))
    expected = torch.load(repo_files["gpt2"] / "pytorch_model.bin", weights_only=True)
    got = load_file(out / "model.safetensors")
    assert got.keys() == {k for k in expected if ".attn.bias" not in k}
    assert all(torch.equal(got[k], expected[k]) for k in got)
    assert load_checkpoint(out).config.n_layer == 2
    assert read_metadata(out)["source"]["files"] == ["config.json", "pytorch_model.bin"]


def test_downloads_are_durable(server, tmp_path, monkeypatch):
    """Each file of a download (fetched, converted from a .bin, linked from the hub cache) fsynced before it takes
    its name, the folder after (test_durability's check)."""
    from faults import WriteOrder
    from huggingface_hub import hf_hub_download

    order = WriteOrder(tmp_path / "outs")
    order.install(monkeypatch.setattr)
    hub.download("gpt2", tmp_path / "outs" / "fetched")
    hub.download("someone/gpt2-bin", tmp_path / "outs" / "converted")
    hf_hub_download("openai-community/gpt2", "model.safetensors", endpoint=server.url)
    hub.download("gpt2", tmp_path / "outs" / "linked")
    assert sum(path.endswith("model.safetensors") for path in order.renames()) == 3
    assert not order.problems(), order.problems()


def test_default_out_and_revision(server, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    commit = server.repos["someone/gpt2-bin"].commit
    out = hub.download("someone/gpt2-bin", revision=commit)
    assert out == Path("checkpoints/someone--gpt2-bin") and is_checkpoint(out)
    with pytest.raises(GptkitError, match="has no revision 'v9'"):
        hub.download("gpt2", tmp_path / "x", revision="v9")


def test_offline_uses_the_hub_cache(server, tmp_path, monkeypatch):
    from huggingface_hub import hf_hub_download

    # as transformers' from_pretrained would have left them
    hf_hub_download("openai-community/gpt2", "config.json", endpoint=server.url)
    blob = hf_hub_download("openai-community/gpt2", "model.safetensors", endpoint=server.url)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    server.reset()
    out = hub.download("gpt2", tmp_path / "gpt2")
    assert server.log == [] and is_checkpoint(out)
    assert os.path.samefile(out / "model.safetensors", os.path.realpath(blob))  # linked, not copied
    with pytest.raises(GptkitError, match="HF_HUB_OFFLINE is set and someone/gpt2-bin is not in the hub cache"):
        hub.download("someone/gpt2-bin", tmp_path / "bin")


def test_refuses_to_overwrite_another_checkpoint(tiny_checkpoint):
    with pytest.raises(GptkitError, match="--force"):
        hub.download("gpt2", tiny_checkpoint)
    hub.download("gpt2", tiny_checkpoint, force=True)
    assert read_config(tiny_checkpoint).n_embd == 32


@pytest.mark.parametrize(
    "name, message",
    [
        ("gpt3", "unknown model 'gpt3': give one of gpt2, gpt2-medium, gpt2-large, gpt2-xl, distilgpt2"),
        ("google-bert/bert-base-uncased", "google-bert/bert-base-uncased: this is a 'bert' model, not GPT-2"),
        ("someone/gated-gpt2", "someone/gated-gpt2 is gated: accept its conditions"),
        ("someone/missing", "someone/missing not found on http://127.0.0.1"),
    ],
)
def test_errors(server, tmp_path, name, message):
    with pytest.raises(GptkitError, match=message.replace(".", r"\.")):
        hub.download(name, tmp_path / "out")
    assert all(r.path in ("/", "config.json") for r in server.log)  # never went past config.json ("/": the probe)
    assert not is_checkpoint(tmp_path / "out")


def test_corrupted_download_is_refused(server, repo_files, tmp_path):
    server.corrupt.add("model.safetensors")  # one byte differs from what the announced sha256 (the ETag) says
    out = tmp_path / "gpt2"
    with pytest.raises(GptkitError) as failure:
        hub.download("gpt2", out)
    assert str(failure.value) == (
        "openai-community/gpt2/model.safetensors arrived corrupted (checksum mismatch): run again to fetch it anew"
    )
    assert not out.exists()  # no weights, no config.json, no partial file a next run would resume from: no folder

    server.reset()
    hub.download("gpt2", out)
    assert [r.range for r in server.log if (r.method, r.path) == ("GET", "model.safetensors")] == [None]  # anew
    assert (out / "model.safetensors").read_bytes() == (repo_files["gpt2"] / "model.safetensors").read_bytes()


def test_partial_download_of_another_version_is_removed(server, repo_files, tmp_path, no_waiting):
    first = {name: repo_files["gpt2"] / name for name in NEEDED}
    changed = load_file(first["model.safetensors"])
    changed["wte.weight"] += 1  # same size, other bytes: resuming from the first version's bytes would mix the two
    save_file(changed, tmp_path / "changed.safetensors", metadata={"format": "pt"})
    server.add_repo("someone/updated-gpt2", first)
    server.drop_at["model.safetensors"] = DROP_AT
    server.fail_after_drop = 503
    out = tmp_path / "out"
    with pytest.raises(GptkitError, match="run again to resume"):
        hub.download("someone/updated-gpt2", out)
    (stale,) = out.glob(".model.safetensors.*.incomplete")

    server.reset()
    server.add_repo("someone/updated-gpt2", {**first, "model.safetensors": tmp_path / "changed.safetensors"})
    hub.download("someone/updated-gpt2", out)
    assert not stale.exists() and not list(out.glob(".*"))
    assert [r.range for r in server.log if (r.method, r.path) == ("GET", "model.safetensors")] == [None]  # whole
    assert (out / "model.safetensors").read_bytes() == (tmp_path / "changed.safetensors").read_bytes()


def test_gated_repo_with_hf_token(server, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_TOKEN", "hf_token_of_another_account")
    with pytest.raises(GptkitError, match="someone/gated-gpt2 is gated: accept its conditions"):
        hub.download("someone/gated-gpt2", tmp_path / "out")

    monkeypatch.setenv("HF_TOKEN", GATED_TOKEN)
    server.reset()
    out = hub.download("someone/gated-gpt2", tmp_path / "out")
    assert is_checkpoint(out) and set(server.fetched()) == NEEDED
    asked = [r for r in server.log if r.repo == "someone/gated-gpt2"]
    assert {(r.method, r.path) for r in asked} == {(method, f) for method in ("HEAD", "GET") for f in NEEDED}
    assert all(r.authorization == f"Bearer {GATED_TOKEN}" for r in asked)


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]  # closed again on return: nothing listens there


@pytest.fixture
def no_waiting(monkeypatch):
    """The seconds every retry waited, huggingface_hub's and gptkit's, which are not waited in tests."""
    import huggingface_hub.file_download
    import huggingface_hub.utils._http

    waits = []
    fake_time = SimpleNamespace(**{**vars(time), "sleep": waits.append})
    for module in (huggingface_hub.utils._http, huggingface_hub.file_download, hub_transfer):
        monkeypatch.setattr(module, "time", fake_time)
    return waits


@pytest.fixture
def short_timeouts(monkeypatch):
    """Requests that get no answer time out after 0.5 s instead of 10 (the loopback server answers within ms)."""
    import huggingface_hub.constants

    for name in ("HF_HUB_ETAG_TIMEOUT", "HF_HUB_DOWNLOAD_TIMEOUT"):
        monkeypatch.setattr(huggingface_hub.constants, name, 0.5)


UNRESOLVABLE = "hub.invalid"  # fails to resolve as a resolver would fail it, without asking one (or a proxy)


@pytest.fixture
def connections(monkeypatch):
    """The host of each connection opened (each looks its host up first); UNRESOLVABLE does not resolve."""
    hosts = []
    getaddrinfo = socket.getaddrinfo

    def lookup(host, *args, **kwargs):
        hosts.append(host)
        if host == UNRESOLVABLE:
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        return getaddrinfo(host, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", lookup)
    return hosts


UNREACHABLE = {
    "unresolvable host": (lambda: f"http://{UNRESOLVABLE}", "its host name does not resolve"),
    "closed port": (lambda: f"http://127.0.0.1:{closed_port()}", "connection refused"),
}


@pytest.mark.parametrize("case", UNREACHABLE)
def test_unreachable_hub_fails_at_once(case, tmp_path, monkeypatch, no_waiting, connections, capfd):
    endpoint, reason = UNREACHABLE[case][0](), UNREACHABLE[case][1]
    monkeypatch.setenv("HF_ENDPOINT", endpoint)
    with pytest.raises(GptkitError) as failure:
        hub.download("gpt2", tmp_path / "gpt2")
    assert connections == [endpoint.split("//")[1].split(":")[0]]  # the probe alone: no retry, nothing after it
    assert no_waiting == []
    message = str(failure.value)
    assert message.startswith(f"cannot reach {endpoint} ({reason}), and openai-community/gpt2 (main) is not in")
    assert "HF_HUB_OFFLINE" in message and "HF_ENDPOINT" in message and "resume" not in message
    assert capfd.readouterr().err == ""  # no log lines of huggingface_hub's


def test_unreachable_hub_with_the_files_in_the_hub_cache(server, tmp_path, monkeypatch, no_waiting, capsys):
    from huggingface_hub import hf_hub_download

    for filename in NEEDED:  # as transformers' from_pretrained would have left them
        hf_hub_download("openai-community/gpt2", filename, endpoint=server.url)
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{closed_port()}")
    out = hub.download("gpt2", tmp_path / "gpt2")
    assert is_checkpoint(out) and no_waiting == []
    assert "connection refused): used the hub cache" in capsys.readouterr().err


# `python -m gptkit` with the tests' seams: each wait is printed to stdout ("waited 1") instead of waited, and
# UNRESOLVABLE does not resolve.
RUN_CLI = f"""
import socket, sys, time
getaddrinfo = socket.getaddrinfo
def lookup(host, *args, **kwargs):
    if host == {UNRESOLVABLE!r}:
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
    return getaddrinfo(host, *args, **kwargs)
socket.getaddrinfo = lookup
time.sleep = lambda seconds: print("waited", seconds)
from gptkit.cli import main
main()
"""


def run_cli(tmp_path, endpoint: str, *args) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in NOT_INHERITED}
    env.update(HF_ENDPOINT=endpoint, HF_HOME=str(tmp_path / "hf-home"), HF_HUB_DISABLE_TELEMETRY="1")
    command = [sys.executable, "-c", RUN_CLI, "download", *map(str, args)]
    return subprocess.run(command, check=False, env=env, capture_output=True, text=True)


@pytest.mark.parametrize("unreachable", UNREACHABLE)
def test_cli_unreachable_hub_prints_one_line(unreachable, tmp_path):
    done = run_cli(tmp_path, UNREACHABLE[unreachable][0](), "gpt2-medium", "-o", tmp_path / "out")
    assert done.returncode == 1 and done.stdout == ""  # and not one wait
    assert done.stderr.startswith("error: cannot reach ") and done.stderr.count("\n") == 1, done.stderr


def failed_requests(server) -> list:
    """What each request that failed got (the probe's 404 aside)."""
    return [r.status for r in server.log if r.status not in (200, 206) and r.path != "/"]


def test_transient_failures_are_retried(server, repo_files, tmp_path, no_waiting, capfd):
    server.failures[("HEAD", "config.json")] = [503]
    server.failures[("HEAD", "model.safetensors")] = [502]
    server.failures[("GET", "model.safetensors")] = [503]
    out = hub.download("gpt2", tmp_path / "gpt2")
    assert (out / "model.safetensors").read_bytes() == (repo_files["gpt2"] / "model.safetensors").read_bytes()
    assert failed_requests(server) == [503, 502, 503]
    assert no_waiting == [1, 1]  # the weights' HEAD and GET each waited once; config.json is tried twice at once
    err = capfd.readouterr().err
    assert "Retry" not in err and "thrown while requesting" not in err  # no log lines of huggingface_hub's


# The weights' request (HEAD: its metadata, retried by huggingface_hub; GET: its bytes, retried by gptkit's fetch,
# and on a 429 or a timeout by huggingface_hub's http_get) -> what its first answers are, and the waits between tries.
RETRIED = {
    "HEAD 429 timeout reset 503 502": ("HEAD", [429, STALL, RESET, 503, 502], [1, 2, 4, 8, 8]),
    "GET 503 reset 502 reset 500": ("GET", [503, RESET, 502, RESET, 500], [1, 2, 4, 8, 8]),
    "GET 429 x5": ("GET", [429] * 5, [1, 2, 4, 8, 8]),
    "GET timeout": ("GET", [STALL], [1]),
}


@pytest.mark.parametrize("case", RETRIED)
def test_failures_that_may_pass_are_retried(case, server, repo_files, tmp_path, no_waiting, short_timeouts):
    method, failures, waits = RETRIED[case]
    server.failures[(method, "model.safetensors")] = list(failures)
    out = hub.download("gpt2", tmp_path / "gpt2")
    assert (out / "model.safetensors").read_bytes() == (repo_files["gpt2"] / "model.safetensors").read_bytes()
    assert [r.status for r in server.log if (r.method, r.path) == (method, "model.safetensors")] == [*failures, 200]
    assert no_waiting == waits


GIVES_UP = {  # the weights' request, its failure, what gptkit says after the sixth
    "HEAD 503": ("HEAD", 503, r"http://127\.0\.0\.1:\d+ answered HTTP 503 for openai-community/gpt2: run again later"),
    "GET 503": ("GET", 503, r"http://127\.0\.0\.1:\d+ answered HTTP 503 for openai-community/gpt2: run again later"),
    "GET reset": ("GET", RESET, r"connection to http://127\.0\.0\.1:\d+ failed \(.+\): run again later"),
    "GET 429": ("GET", 429, r"http://127\.0\.0\.1:\d+ answered HTTP 429 for openai-community/gpt2: run again later"),
}


@pytest.mark.parametrize("case", GIVES_UP)
def test_gives_up_after_five_retries(case, server, tmp_path, no_waiting):
    method, failure, message = GIVES_UP[case]
    server.failures[(method, "model.safetensors")] = [failure] * 6  # a seventh try would get the file
    with pytest.raises(GptkitError) as refused:
        hub.download("gpt2", tmp_path / "gpt2")
    assert re.fullmatch(message, str(refused.value))  # one line
    assert [r.status for r in server.log if (r.method, r.path) == (method, "model.safetensors")] == [failure] * 6
    assert no_waiting == [1, 2, 4, 8, 8]
    assert not is_checkpoint(tmp_path / "gpt2")


def test_cli_retries_on_one_status_line(server, tmp_path):
    server.failures[("HEAD", "model.safetensors")] = [502]  # retried by huggingface_hub, which logs it
    server.failures[("GET", "model.safetensors")] = [503]  # retried by gptkit
    done = run_cli(tmp_path, server.url, "gpt2", "-o", tmp_path / "gpt2")
    assert done.returncode == 0 and is_checkpoint(tmp_path / "gpt2"), done.stderr
    assert failed_requests(server) == [502, 503]
    assert done.stdout == "waited 1\nwaited 1\n"
    # without a terminal the status line is not drawn; huggingface_hub's log lines never show
    assert "Retry" not in done.stderr and "thrown" not in done.stderr and "HTTP" not in done.stderr, done.stderr


def test_hub_that_keeps_failing(server, tmp_path, no_waiting):
    server.failing = 503
    with pytest.raises(GptkitError, match=r"answered HTTP 503 for openai-community/gpt2: run again later$"):
        hub.download("gpt2", tmp_path / "gpt2")
    assert no_waiting == [1, 2, 4, 8, 8]  # huggingface_hub's five retries of config.json's metadata request


def test_not_enough_disk_space(tmp_path, monkeypatch):
    usage = namedtuple("usage", "total used free")(10**6, 0, 1000)
    monkeypatch.setattr(hub_transfer.shutil, "disk_usage", lambda path: usage)
    with pytest.raises(GptkitError, match="not enough disk space .* needs .* more, 1.0 kB free"):
        hub.download("gpt2", tmp_path / "gpt2")


def test_disk_full_while_downloading(tmp_path, monkeypatch):
    import huggingface_hub.file_download

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(huggingface_hub.file_download, "http_get", full)
    with pytest.raises(GptkitError, match="no space left on the device of .*: free some space and run again"):
        hub.download("gpt2", tmp_path / "gpt2")


def test_cli(server, tmp_path):
    done = run_cli(tmp_path, server.url, "gpt2", "--out", tmp_path / "gpt2")
    assert done.returncode == 0 and done.stdout == "", done.stderr
    server.reset()
    again = run_cli(tmp_path, server.url, "gpt2", "--out", tmp_path / "gpt2")
    assert again.returncode == 0 and "nothing to download" in again.stderr
    same = run_cli(tmp_path, server.url, "openai-community/gpt2", "-o", tmp_path / "gpt2")
    assert same.returncode == 0 and "nothing to download" in same.stderr  # the same repo, under its full id
    assert server.log == []  # neither asked the hub anything
    bad = run_cli(tmp_path, server.url, "gpt3")
    assert bad.returncode == 1 and bad.stderr.startswith("error: unknown model 'gpt3'") and bad.stderr.count("\n") == 1


@pytest.mark.parametrize("holder", ["gptkit download", "gptkit train"])
def test_a_folder_in_use_is_refused_before_any_request(server, tmp_path, holder):
    """download holds its folder's lock (runlock) as train and eval do: a second download into the same folder, or a
    download into a folder a training run is using, is refused in one line, asking the hub nothing."""
    from gptkit.training.runlock import folder_lock

    out = tmp_path / "gpt2"
    with folder_lock(out, holder, "the hint"):
        with pytest.raises(GptkitError) as refused:
            hub.download("gpt2", out)
    assert str(refused.value) == (
        f"{out} is in use by process {os.getpid()} ({holder}): wait for it to end, or download into another --out"
    )
    assert server.log == [] and not out.exists()
    hub.download("gpt2", out)  # once the holder has let go
    assert is_checkpoint(out)
