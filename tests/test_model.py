import math

import pytest
import torch
import torch.nn.functional as F

from gptkit.model.config import PRESETS, GPTConfig
from gptkit.model.gpt import GPT
from gptkit.model.kv_cache import KVCache


def test_shapes_and_loss(tiny_model, tiny_config):
    idx = torch.randint(0, tiny_config.vocab_size, (3, 17))
    logits, loss = tiny_model(idx)
    assert logits.shape == (3, 17, tiny_config.vocab_size) and loss is None
    targets = torch.randint(0, tiny_config.vocab_size, (3, 17))
    no_logits, loss = tiny_model(idx, targets)
    assert no_logits is None and loss.shape == ()
    assert loss.item() == pytest.approx(math.log(tiny_config.vocab_size), rel=0.05)
    logits_last, _ = tiny_model(idx, last_only=True)
    assert logits_last.shape == (3, 1, tiny_config.vocab_size)
    assert torch.allclose(logits_last[:, 0], logits[:, -1], atol=1e-6)


def test_ignored_targets(tiny_model):
    idx = torch.randint(0, 1000, (2, 8))
    targets = idx.clone()
    targets[:, :4] = -1
    logits, _ = tiny_model(idx)
    _, loss = tiny_model(idx, targets)
    direct = torch.nn.functional.cross_entropy(logits[:, 4:].reshape(-1, logits.size(-1)), idx[:, 4:].reshape(-1))
    assert torch.allclose(loss, direct, atol=1e-6)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_loss_and_gradients_equal_cross_entropy(dtype, monkeypatch):
    """The sliced loss (LinearCrossEntropy) against F.cross_entropy on the full logits, with ignored targets and a
    vocabulary that does not divide into the slices."""
    monkeypatch.setattr("gptkit.model.gpt.LOSS_CHUNK_SIZE", 300)
    torch.manual_seed(0)
    model = GPT(GPTConfig(n_layer=2, n_head=2, n_embd=64, block_size=32, vocab_size=1000))
    idx, targets = torch.randint(0, 1000, (3, 32)), torch.randint(0, 1000, (3, 32))
    targets[0, :7] = -1
    targets[1, 3] = 999  # the last, short slice

    def loss_and_grads(sliced: bool):
        model.zero_grad()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=dtype == torch.bfloat16):
            if sliced:
                loss = model(idx, targets)[1]
            else:
                logits = model(idx)[0]
                loss = F.cross_entropy(logits.flatten(0, 1).float(), targets.flatten(), ignore_index=-1)
        loss.backward()
        return loss.detach(), {name: p.grad.clone() for name, p in model.named_parameters()}

    reference_loss, reference_grads = loss_and_grads(sliced=False)
    loss, grads = loss_and_grads(sliced=True)
    tolerance = 1e-5 if dtype == torch.float32 else 1e-2
    assert torch.allclose(loss, reference_loss, rtol=tolerance)
    for name, grad in grads.items():
        scale = reference_grads[name].abs().max()
        assert (grad - reference_grads[name]).abs().max() <= tolerance * scale, name


def test_loss_with_every_target_ignored_is_nan_like_cross_entropy(tiny_model):
    idx = torch.randint(0, 1000, (2, 8))
    loss = tiny_model(idx, torch.full((2, 8), -1))[1]
    assert torch.isnan(loss)


def test_weight_tying(tiny_model):
    assert tiny_model.lm_head.weight is tiny_model.transformer.wte.weight
    params = sum(p.numel() for p in tiny_model.parameters())  # parameters() yields a shared tensor once
    assert tiny_model.num_params() == params


def test_init_scale():
    torch.manual_seed(0)
    config = GPTConfig(n_layer=8, n_head=4, n_embd=256, block_size=64, vocab_size=5000)
    model = GPT(config)
    block = model.transformer.h[0]
    assert block.attn.c_attn.weight.std().item() == pytest.approx(0.02, rel=0.05)
    assert block.mlp.c_fc.weight.std().item() == pytest.approx(0.02, rel=0.05)
    residual_std = 0.02 / math.sqrt(2 * config.n_layer)
    assert block.attn.c_proj.weight.std().item() == pytest.approx(residual_std, rel=0.05)
    assert block.mlp.c_proj.weight.std().item() == pytest.approx(residual_std, rel=0.05)
    assert model.transformer.wte.weight.std().item() == pytest.approx(0.02, rel=0.05)
    assert torch.all(block.attn.c_attn.bias == 0)


@pytest.mark.parametrize("name,millions", [("gpt2", 124), ("gpt2-medium", 355), ("gpt2-large", 774), ("gpt2-xl", 1558)])
def test_presets_sizes(name, millions):
    with torch.device("meta"):
        model = GPT(PRESETS[name])
    assert round(model.num_params() / 1e6) == millions


def test_causal(tiny_model):
    idx = torch.randint(0, 1000, (1, 12))
    changed = idx.clone()
    changed[0, 8:] = (changed[0, 8:] + 1) % 1000
    a, _ = tiny_model(idx)
    b, _ = tiny_model(changed)
    assert torch.allclose(a[:, :8], b[:, :8], atol=1e-6)
    assert not torch.allclose(a[:, 8:], b[:, 8:])


def test_kv_cache_matches_full_forward(tiny_model):
    idx = torch.randint(0, 1000, (2, 30))
    with torch.inference_mode():
        full, _ = tiny_model(idx)
        cache = KVCache.for_model(tiny_model, rows=2)
        chunks = [tiny_model(idx[:, :8], cache=cache, pos=0)[0], tiny_model(idx[:, 8:13], cache=cache, pos=8)[0]]
        chunks += [tiny_model(idx[:, t : t + 1], cache=cache, pos=t)[0] for t in range(13, 20)]  # a token at a time
        chunks.append(tiny_model(idx[:, 20:], cache=cache, pos=20)[0])  # a chunk after single steps
    # the same sums in another order (other shapes): each side within float32's 2^-24 per term of the longest
    # reduction (the MLP's 256 inputs) of the logits' size
    torch.testing.assert_close(torch.cat(chunks, dim=1), full, atol=2 * 256 * 2**-24 * full.abs().max().item(), rtol=0)


def test_kv_cache_views_grow_and_keep_rows(tiny_model):
    """Rows prefilled through views of one cache land in it; growing keeps them; keep_rows moves the last kept rows
    into the freed ones below, each with its own positions."""
    prompts = [torch.randint(0, 1000, (1, n), generator=torch.Generator().manual_seed(n)) for n in (2, 5, 3)]
    cache = KVCache.for_model(tiny_model, rows=3, length=8)
    with torch.inference_mode():
        for row, prompt in enumerate(prompts):
            tiny_model(prompt, cache=cache.view(slice(row, row + 1)), pos=0)
        stored = [[layer[row, :, : p.size(1)].clone() for layer in cache.k + cache.v] for row, p in enumerate(prompts)]
        cache.grow(16)
        assert cache.length == 16 and cache.rows == 3 and cache.dtype == torch.float32
        assert all(layer[:, :, 8:].eq(0).all() for layer in cache.k + cache.v)
        assert cache.keep_rows([0, 2], [p.size(1) for p in prompts]) == [0, 2]
    for row, before in ((0, stored[0]), (1, stored[2])):
        for layer, tensor in zip(cache.k + cache.v, before):
            assert torch.equal(layer[row, :, : tensor.size(1)], tensor)


def test_context_limit_and_crop(tiny_model, tiny_config):
    with pytest.raises(ValueError, match="longer than the context"):
        tiny_model(torch.zeros(1, tiny_config.block_size + 1, dtype=torch.long))
    idx = torch.randint(0, 1000, (1, 16))
    before, _ = tiny_model(idx)
    tiny_model.crop_block_size(16)
    after, _ = tiny_model(idx)
    assert tiny_model.transformer.wpe.weight.shape[0] == 16 and torch.allclose(before, after)


def test_config_validation():
    with pytest.raises(ValueError, match="divisible"):
        GPTConfig(n_embd=100, n_head=3)


def test_activation_checkpointing_gives_the_same_loss_and_gradients_with_dropout(tiny_config):
    """The backward recomputes each block's forward with the RNG states of the first pass: the same dropout masks,
    the same operations, so bit-identical gradients; and the model keeps only each block's input for the backward."""
    config = GPTConfig(**{**tiny_config.__dict__, "dropout": 0.1})
    torch.manual_seed(0)
    model = GPT(config).train()
    idx = torch.randint(0, config.vocab_size, (2, 32))
    results = []
    for recompute in (False, True):
        model.activation_checkpointing = recompute
        model.zero_grad()
        torch.manual_seed(1)
        _, loss = model(idx, idx)
        loss.backward()
        results.append((loss.detach(), {name: p.grad.clone() for name, p in model.named_parameters()}))
    (plain_loss, plain), (recomputed_loss, recomputed) = results
    assert torch.equal(plain_loss, recomputed_loss)
    assert all(torch.equal(plain[name], recomputed[name]) for name in plain)

    def kept_for_backward() -> int:
        """The elements of the activations autograd keeps for the backward of the logits (the weights aside)."""
        weights, kept = {p.data_ptr() for p in model.parameters()}, []
        with torch.autograd.graph.saved_tensors_hooks(lambda t: kept.append(t) or t, lambda t: t):
            model(idx)
        return sum(t.numel() for t in kept if t.data_ptr() not in weights)

    checkpointed = kept_for_backward()
    model.activation_checkpointing = False
    assert checkpointed < kept_for_backward() / 4
