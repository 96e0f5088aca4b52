"""Decoding's choices of kernels on the CPU: bf16 products of one or two rows in torch's own matrix-vector kernel
rather than oneDNN's, only where torch's kernels are vectorized (inference/decode.py), and a bf16 model's keys and
values cached in fp32 (model/kv_cache.py); each with the results of the way it replaces."""

import pytest
import torch

from gptkit.inference import decode
from gptkit.inference.decode import decode_step, decoding_cache, prefill, torch_gemv_wins
from gptkit.machine.cpu import cpu_level
from gptkit.model.kv_cache import KVCache


def test_torch_gemv_for_few_rows_above_the_default_level():
    assert torch_gemv_wins(1, "AVX512") and torch_gemv_wins(2, "AVX2")
    assert not torch_gemv_wins(3, "AVX512") and not torch_gemv_wins(16, "AVX2")
    assert not torch_gemv_wins(1, "DEFAULT")


def onednn_during_steps(model, rows: int, monkeypatch) -> list[bool]:
    """Whether oneDNN was on during each of two decoding steps of rows rows (and on again after them)."""
    seen = []
    real_step = decode.one_token_logits

    def step(*args):
        seen.append(torch.backends.mkldnn.enabled)
        return real_step(*args)

    monkeypatch.setattr(decode, "one_token_logits", step)
    idx = torch.randint(0, 1000, (rows, 5))
    with torch.inference_mode():
        cache = decoding_cache(model, rows, 8)
        prefill(model, idx, cache)
        decode_step(model, idx[:, -1:], 5, cache)
        decode_step(model, idx[:, -1:], torch.tensor([6]), cache)
    assert torch.backends.mkldnn.enabled
    return seen


@pytest.mark.parametrize("rows", [1, 2, 3])
def test_bf16_steps_of_few_rows_leave_onednn(tiny_model, rows, monkeypatch):
    expected_on = not torch_gemv_wins(rows, cpu_level())
    assert onednn_during_steps(tiny_model.to(torch.bfloat16), rows, monkeypatch) == [expected_on] * 2


def test_fp32_steps_keep_onednn(tiny_model, monkeypatch):
    assert onednn_during_steps(tiny_model, 1, monkeypatch) == [True, True]


def test_torch_gemv_step_matches_onednn_step(tiny_model):
    """The same bf16 step through either kernel: equal up to bf16's rounding, which each of the n_layer blocks and the
    head may move by a unit in the last place of the largest logit."""
    model = tiny_model.to(torch.bfloat16)
    idx = torch.randint(0, 1000, (1, 9))
    logits = {}
    with torch.inference_mode():
        for onednn in (True, False):
            cache = decoding_cache(model, 1, 10)
            prefill(model, idx[:, :-1], cache)
            with torch.backends.mkldnn.flags(enabled=onednn):
                logits[onednn] = decode.one_token_logits(model, idx[:, -1:], torch.tensor([8]), cache).float()
    scale = logits[True].abs().max()
    tolerance = 2 * (model.config.n_layer + 1) * torch.finfo(torch.bfloat16).eps * scale
    assert (logits[True] - logits[False]).abs().max() <= tolerance
    assert scale > 0


def test_a_bf16_model_on_the_cpu_caches_in_fp32(tiny_model):
    assert KVCache.for_model(tiny_model, 1, 8).dtype == torch.float32
    assert KVCache.for_model(tiny_model.to(torch.bfloat16), 1, 8).dtype == torch.float32


def test_bf16_cached_steps_match_the_full_forward(tiny_model):
    """Steps over an fp32 cache give the bf16 model's own logits, up to the rounding of bf16 that the full forward's
    bf16 attention adds (a unit in the last place of the largest logit per block and the head)."""
    model = tiny_model.to(torch.bfloat16)
    idx = torch.randint(0, 1000, (2, 12))
    with torch.inference_mode():
        full = model(idx)[0].float()
        cache = decoding_cache(model, 2, 12)
        steps = [prefill(model, idx[:, :6], cache)]
        steps += [decode_step(model, idx[:, t : t + 1], t, cache) for t in range(6, 11)]
    scale = full.abs().max()
    tolerance = 2 * (model.config.n_layer + 1) * torch.finfo(torch.bfloat16).eps * scale
    assert (torch.stack(steps, dim=1).float() - full[:, 5:11]).abs().max() <= tolerance
