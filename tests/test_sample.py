import os

import pytest
import torch
from conftest import assert_one_line_error
from typer.testing import CliRunner

from gptkit.checkpoint.folder import save_checkpoint
from gptkit.cli import app
from gptkit.data.tokenizer import EOT_TOKEN, encode, get_tokenizer
from gptkit.inference.decode import decoding_cache, one_token_logits, prepare_for_decoding
from gptkit.inference.generate import generate
from gptkit.inference.sampling import Sampling, next_token_distribution, sample_next
from gptkit.inference.stream import TextStream
from gptkit.model.blocked import BlockedLinear
from gptkit.model.gpt import GPT, GPTConfig

runner = CliRunner()


def prompt_batch(batch_size: int = 2, length: int = 8) -> torch.Tensor:
    return torch.randint(0, 50257, (batch_size, length), generator=torch.Generator().manual_seed(1))


GREEDY = Sampling(temperature=0)


def seeded(seed: int, **settings) -> Sampling:
    """Sampling with settings that draws from a generator seeded with seed."""
    return Sampling(generator=torch.Generator().manual_seed(seed), **settings)


def generated(model, idx, n, sampling: Sampling = Sampling(), **kwargs) -> torch.Tensor:
    return torch.stack(list(generate(model, idx, n, sampling, **kwargs)), dim=1)


# --- generate --------------------------------------------------------------------------------------------------------


def test_greedy_matches_transformers(tiny_model, tiny_checkpoint):
    from transformers import GPT2LMHeadModel

    hf = GPT2LMHeadModel.from_pretrained(tiny_checkpoint).eval()
    idx = prompt_batch()
    expected = hf.generate(
        idx,
        attention_mask=torch.ones_like(idx),
        do_sample=False,
        max_new_tokens=24,
        min_new_tokens=24,  # no early stop at <|endoftext|>
        pad_token_id=EOT_TOKEN,
    )[:, idx.size(1) :]
    assert torch.equal(generated(tiny_model, idx, 24, GREEDY), expected)


def test_decoding_layout_gives_the_same_logits(tiny_model, tiny_config):
    idx = prompt_batch()
    with torch.inference_mode():
        expected, _ = tiny_model(idx)
        prepared = GPT(tiny_config).eval()
        prepared.load_state_dict(tiny_model.state_dict())
        prepare_for_decoding(prepared)
        assert all(not isinstance(m, torch.nn.Linear) for m in prepared.modules())
        torch.testing.assert_close(prepared(idx)[0], expected, atol=1e-4, rtol=0)


@pytest.mark.parametrize("blocks", [1, 2, 3])
@pytest.mark.parametrize("in_features, out_features, bias", [(16, 50, True), (40, 16, True), (16, 37, False)])
def test_blocked_linear_matches_linear(blocks, in_features, out_features, bias):
    # Wide and deep layers (two layouts), outputs not a multiple of the blocks (padding), no bias (a zero one).
    linear = torch.nn.Linear(in_features, out_features, bias=bias)
    blocked = BlockedLinear(linear, blocks)
    for shape in [(1, 1), (4, 1), (2, 5)]:  # a decoding step, a batch of them, a prefill
        x = torch.randn(*shape, in_features)
        torch.testing.assert_close(blocked(x), linear(x), atol=1e-5, rtol=1e-5)


def test_sliding_window_continues_past_the_context(tiny_model):
    block_size = tiny_model.config.block_size
    idx = prompt_batch(batch_size=1, length=40)
    out = generated(tiny_model, idx, 100, GREEDY)
    assert out.shape == (1, 100)
    # Reference without a cache: once the context overflows, keep its last half, as generate() does.
    tokens, start = idx[0].tolist(), 0
    with torch.inference_mode():
        for _ in range(100):
            if len(tokens) - start > block_size:
                start = len(tokens) - block_size // 2
            logits, _ = tiny_model(torch.tensor([tokens[start:]]))
            tokens.append(logits[0, -1].argmax().item())
    assert out[0].tolist() == tokens[40:]


def test_same_seed_same_tokens(tiny_model):
    idx = prompt_batch()
    runs = [generated(tiny_model, idx, 20, seeded(seed)) for seed in (7, 7, 8)]
    assert torch.equal(runs[0], runs[1])
    assert not torch.equal(runs[0], runs[2])


def test_top_k_1_and_tiny_top_p_are_greedy(tiny_model):
    idx = prompt_batch()
    greedy = generated(tiny_model, idx, 12, GREEDY)
    assert torch.equal(generated(tiny_model, idx, 12, seeded(0, top_k=1)), greedy)
    tiny_top_p = generated(tiny_model, idx, 12, seeded(0, top_k=None, top_p=1e-6))
    assert torch.equal(tiny_top_p, greedy)


def test_stops_when_every_row_has_a_stop_token(tiny_model):
    idx = prompt_batch()
    first = generated(tiny_model, idx, 1, GREEDY)[:, 0]
    assert len(list(generate(tiny_model, idx, 10, GREEDY, stop_tokens=tuple(first.tolist())))) == 1


def test_top_k_and_top_p_keep_only_their_candidates():
    logits = torch.log(torch.tensor([[0.05, 0.5, 0.15, 0.3]])).repeat(2000, 1)
    gen = torch.Generator().manual_seed(0)
    assert set(sample_next(logits, 1.0, 2, None, gen).tolist()) == {1, 3}
    assert set(sample_next(logits, 1.0, None, 0.7, gen).tolist()) == {1, 3}  # 0.5 + 0.3 reaches 0.7
    assert set(sample_next(logits, 1.0, None, 0.8, gen).tolist()) == {1, 3}
    assert set(sample_next(logits, 1.0, None, 0.81, gen).tolist()) == {1, 2, 3}
    assert set(sample_next(logits, 1.0, 3, 0.9, gen).tolist()) == {1, 2, 3}  # top-p over the top-k's renormalized
    assert set(sample_next(logits, 0.0, None, None, gen).tolist()) == {1}


def test_next_token_distribution_is_what_sample_next_draws_from():
    logits = torch.log(torch.tensor([[0.05, 0.5, 0.15, 0.3]]))
    expected = {
        (None, None): [0.05, 0.5, 0.15, 0.3],
        (2, None): [0, 0.625, 0, 0.375],
        (None, 0.7): [0, 0.625, 0, 0.375],
    }
    for (top_k, top_p), probs in expected.items():
        torch.testing.assert_close(next_token_distribution(logits, 1.0, top_k, top_p)[0], torch.tensor(probs))
    torch.testing.assert_close(next_token_distribution(logits, 0, None, None)[0], torch.tensor([0.0, 1, 0, 0]))


@pytest.mark.slow
def test_compiled_decoding_reuses_its_graph_for_other_lengths(tiny_model, tiny_config):
    from torch._dynamo.utils import counters

    compiled = prepare_for_decoding(GPT(tiny_config).eval(), compile=True)
    generated(compiled, prompt_batch(), 12)
    graphs = counters["stats"]["unique_graphs"]
    for prompt_length, new_tokens in ((5, 30), (20, 3)):  # other cache lengths, up to the same multiple
        generated(compiled, prompt_batch(length=prompt_length), new_tokens)
    assert counters["stats"]["unique_graphs"] == graphs


def test_a_compiled_step_is_the_one_decoding_runs_over_a_cache_of_whole_multiples():
    """What --compile changes, without compiling (the test above compiles): a model given a compiled step decodes
    through it, over a cache of whole multiples of COMPILED_CACHE_MULTIPLE positions, never past the context."""
    model = GPT(GPTConfig(n_layer=2, n_head=4, n_embd=64, block_size=1000)).eval()
    assert decoding_cache(model, 1, 300).length == 300
    plain = generated(model, prompt_batch(), 5, GREEDY)
    lengths = []

    def compiled_step(model, token, pos, cache):
        lengths.append(cache.length)
        return one_token_logits(model, token, pos, cache)

    model.compiled_step = compiled_step
    assert [decoding_cache(model, 1, n).length for n in (1, 256, 257, 600, 999)] == [256, 256, 512, 768, 1000]
    assert torch.equal(generated(model, prompt_batch(), 5, GREEDY), plain)
    assert lengths == [256] * 4  # each step after the prompt's pass


# --- speculative decoding --------------------------------------------------------------------------------------------


@pytest.fixture
def draft_model() -> GPT:
    torch.manual_seed(1)
    return GPT(GPTConfig(n_layer=1, n_head=2, n_embd=32, block_size=64)).eval()


@pytest.mark.parametrize("draft_tokens", [1, 4])
def test_speculative_greedy_is_the_models_greedy(tiny_model, draft_model, draft_tokens):
    idx = prompt_batch()
    greedy = generated(tiny_model, idx, 70, GREEDY)  # past the context of 64: the window slides
    for draft in (tiny_model, draft_model):
        stats = {}
        out = generated(tiny_model, idx, 70, GREEDY, draft=draft, draft_tokens=draft_tokens, stats=stats)
        assert torch.equal(out, greedy)
        assert stats["proposed"] > 0 and 0 <= stats["accepted"] <= stats["proposed"]
        if draft is tiny_model:
            assert stats["accepted"] == stats["proposed"]  # the model agrees with itself


def test_speculative_sampling_is_seeded_and_stops(tiny_model, draft_model):
    idx = prompt_batch()
    runs = [generated(tiny_model, idx, 30, seeded(s), draft=draft_model) for s in (7, 7, 8)]
    assert torch.equal(runs[0], runs[1]) and not torch.equal(runs[0], runs[2])
    first = generated(tiny_model, idx, 1, GREEDY)[:, 0]
    stopped = list(generate(tiny_model, idx, 10, GREEDY, stop_tokens=tuple(first.tolist()), draft=draft_model))
    assert len(stopped) == 1


def token_frequencies(model, draft, runs: int) -> torch.Tensor:
    """Frequencies (3, vocab) of the first three sampled tokens from a one-token prompt, speculative with draft."""
    counts = torch.zeros(3, model.config.vocab_size)
    generator = torch.Generator().manual_seed(0)
    idx = torch.zeros(4, 1, dtype=torch.long)  # 4 rows a run: rows advance by their fewest accepted tokens
    for _ in range(runs):
        for i, tokens in enumerate(
            generate(model, idx, 3, Sampling(top_k=None, generator=generator), draft=draft, draft_tokens=2)
        ):
            counts[i].index_add_(0, tokens, torch.ones(4))
    return counts / counts.sum(dim=1, keepdim=True)


def exact_token_probabilities(model) -> torch.Tensor:
    """The model's probabilities (3, vocab) of each of the first three tokens after a one-token prompt."""
    vocab = model.config.vocab_size
    paths, probs, marginals = torch.zeros(1, 1, dtype=torch.long), torch.ones(1), []
    with torch.inference_mode():
        for _ in range(3):
            joint = probs[:, None] * torch.softmax(model(paths)[0][:, -1], dim=-1)  # (paths, vocab)
            marginals.append(joint.sum(dim=0))
            paths = torch.cat(
                [paths.repeat_interleave(vocab, dim=0), torch.arange(vocab).repeat(len(paths))[:, None]], 1
            )
            probs = joint.flatten()
    return torch.stack(marginals)


def test_speculative_sampling_draws_from_the_models_distribution():
    config = GPTConfig(n_layer=1, n_head=2, n_embd=16, block_size=8, vocab_size=4)
    model, draft = GPT(config).eval(), GPT(config).eval()
    for seed, m in ((0, model), (3, draft)):  # large random weights: distributions far from uniform and each other
        torch.manual_seed(seed)
        with torch.no_grad():
            for parameter in m.parameters():
                parameter.normal_(0, 0.5)
    exact = exact_token_probabilities(model)
    distance = lambda freq: (freq - exact).abs().sum(dim=1).max() / 2  # noqa: E731 (worst total variation)
    assert distance(exact_token_probabilities(draft)) > 0.25  # the draft alone samples something else...
    assert distance(token_frequencies(model, draft, 150)) < 0.07  # ...but corrected by the acceptance rule, the model's


# --- streaming text --------------------------------------------------------------------------------------------------


def stream_text(text: str, stop: str | None = None) -> tuple[list[str], TextStream]:
    stream = TextStream(stop)
    pieces = [stream.add(token) for token in encode(text)]
    return [*pieces, stream.finish()], stream


def test_stream_holds_back_characters_split_across_tokens():
    text = "héllo 🙂 日本語 wörld"
    assert any(b"\x80" <= get_tokenizer().decode_single_token_bytes(t)[:1] < b"\xc0" for t in encode(text))
    pieces, _ = stream_text(text)
    assert "".join(pieces) == text
    assert not any("\ufffd" in piece for piece in pieces)


def test_stream_ends_at_the_stop_text_and_never_prints_part_of_it():
    pieces, stream = stream_text("one two\n\nthree", stop="\n\n")
    assert "".join(pieces) == "one two"
    assert stream.done
    pieces, _ = stream_text("one two\nthree", stop="\n\n")
    assert "".join(pieces) == "one two\nthree"


# --- the command -----------------------------------------------------------------------------------------------------


@pytest.fixture
def workdir(tmp_path, monkeypatch, tiny_model):
    """A working directory with checkpoints/tiny in it."""
    save_checkpoint(tiny_model, tmp_path / "checkpoints" / "tiny")
    monkeypatch.chdir(tmp_path)
    return tmp_path


def run(*args, input=None):
    return runner.invoke(app, ["sample", *args], input=input)


def test_cli_streams_from_the_newest_checkpoint(workdir, tiny_config):
    torch.manual_seed(1)
    other = save_checkpoint(GPT(tiny_config).eval(), workdir / "checkpoints" / "other")
    tiny = workdir / "checkpoints" / "tiny"
    greedy = ["Hello", "--temperature", "0", "--max-new-tokens", "8", "--device", "cpu", "--dtype", "float32"]
    texts = {ckpt: run(*greedy, "--ckpt", str(ckpt)).stdout for ckpt in (tiny, other)}
    assert texts[tiny] != texts[other] and all(text.startswith("Hello") for text in texts.values())
    for newest, older in ((tiny, other), (other, tiny)):  # newest by its weights' time, whatever the names' order
        os.utime(older / "model.safetensors", (1_000_000_000, 1_000_000_000))
        os.utime(newest / "model.safetensors", (2_000_000_000, 2_000_000_000))
        result = run(*greedy)
        assert result.exit_code == 0, result.output
        assert result.stdout == texts[newest]
        assert "8 tokens in" in result.stderr and "tokens/s" in result.stderr


@pytest.mark.slow
def test_cli_compile_gives_the_same_text_and_says_what_compiling_took(workdir):
    # the compiled step computes what the eager one does in float32 (under bf16 they may round apart); greedy: a
    # random model's top logits are close, so a step that computes something else soon picks another token
    pinned = ["--device", "cpu", "--dtype", "float32"]
    args = ["Hello", "--temperature", "0", "--max-new-tokens", "12", "--num-samples", "2", *pinned]
    plain = run(*args)
    compiled = run(*args, "--compile")
    assert compiled.exit_code == 0, compiled.output
    assert compiled.stdout == plain.stdout and "sample 2/2" in plain.stdout
    assert "of it compiling the step" in compiled.stderr and "compiling" not in plain.stderr


def test_cli_options(workdir):
    args = ["--ckpt", str(workdir / "checkpoints" / "tiny"), "--dtype", "float32", "--device", "cpu"]
    result = run("", *args, "--max-new-tokens", "6", "--num-samples", "3", "--temperature", "0.8", "--top-p", "0.9")
    assert result.exit_code == 0, result.output
    assert [line for line in result.stdout.splitlines() if "sample" in line] == [
        f"─── sample {i}/3 ───" for i in (1, 2, 3)
    ]
    greedy = run("A", *args, "--temperature", "0", "--max-new-tokens", "20")
    stop = greedy.stdout[2:5]
    stopped = run("A", *args, "--temperature", "0", "--max-new-tokens", "20", "--stop", stop)
    assert stopped.exit_code == 0 and stopped.stdout == greedy.stdout[: greedy.stdout.index(stop)] + "\n"


def test_cli_reads_the_prompt_from_stdin(workdir):
    result = run("-", "--max-new-tokens", "3", "--dtype", "float32", input="Once upon a time")
    assert result.exit_code == 0, result.output
    assert result.stdout.startswith("Once upon a time")


@pytest.mark.parametrize(
    "args, message",
    [
        (["--top-p", "0"], "--top-p must be in (0, 1]"),
        (["--top-p", "1.5"], "--top-p must be in (0, 1]"),
        (["--temperature", "-1"], "--temperature must be 0"),
        (["--top-k", "-2"], "--top-k must be 0"),
        (["--num-samples", "0"], "--num-samples must be at least 1"),
        (["--max-new-tokens", "0"], "--max-new-tokens must be at least 1"),
        (["--ckpt", "nowhere"], "checkpoint nowhere does not exist"),
        (["--draft", "nowhere"], "checkpoint nowhere does not exist"),
        (["--draft-tokens", "0"], "--draft-tokens must be at least 1"),
        (["--quantize", "int3"], "--quantize int3 is not supported"),
    ],
)
def test_cli_bad_options(workdir, args, message):
    assert_one_line_error(run("Hi", *args), message)


def test_cli_prompt_longer_than_the_context(workdir):
    assert_one_line_error(run(" ".join(["word"] * 100)), "prompt is 100 tokens long, more than the model's context of 64")


def test_cli_without_any_checkpoint(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = run("Hello")
    assert_one_line_error(result, "no checkpoint under checkpoints/")
    assert "gptkit download gpt2" in result.stderr


def test_cli_speculative(workdir, tiny_model):
    args = ["A", "--temperature", "0", "--max-new-tokens", "20", "--device", "cpu", "--dtype", "float32"]
    plain = run(*args)
    draft = str(workdir / "checkpoints" / "tiny")
    result = run(*args, "--draft", draft, "--draft-tokens", "3")
    assert result.exit_code == 0, result.output
    assert result.stdout == plain.stdout
    assert "draft acceptance 100%" in result.stderr
    sampled = [
        run("A", "--max-new-tokens", "20", "--num-samples", "2", "--seed", "4", "--draft", draft) for _ in range(2)
    ]
    assert sampled[0].exit_code == 0 and sampled[0].stdout == sampled[1].stdout
    assert "sample 2/2" in sampled[0].stdout


@pytest.mark.parametrize(
    "config, message",
    [
        (GPTConfig(n_layer=1, n_head=2, n_embd=32, block_size=64, vocab_size=50304), "vocabulary of 50304 tokens"),
        (GPTConfig(n_layer=1, n_head=2, n_embd=32, block_size=32), "context of 32 tokens, shorter than the model's 64"),
    ],
)
def test_cli_draft_that_does_not_fit(workdir, config, message):
    save_checkpoint(GPT(config), workdir / "draft")
    result = run("Hi", "--ckpt", str(workdir / "checkpoints" / "tiny"), "--draft", str(workdir / "draft"))
    assert_one_line_error(result, message)
