import math

import pytest
import torch

from gptkit.model import GPT, PRESETS, GPTConfig


def test_shapes_and_loss(tiny_model, tiny_config):
    idx = torch.randint(0, tiny_config.vocab_size, (3, 17))
    logits, loss = tiny_model(idx)
    assert logits.shape == (3, 17, tiny_config.vocab_size) and loss is None
    targets = torch.randint(0, tiny_config.vocab_size, (3, 17))
    logits, loss = tiny_model(idx, targets)
    assert loss.shape == () and loss.item() == pytest.approx(math.log(tiny_config.vocab_size), rel=0.05)
    logits_last, _ = tiny_model(idx, last_only=True)
    assert logits_last.shape == (3, 1, tiny_config.vocab_size)
    assert torch.allclose(logits_last[:, 0], logits[:, -1], atol=1e-6)


def test_ignored_targets(tiny_model):
    idx = torch.randint(0, 1000, (2, 8))
    targets = idx.clone()
    targets[:, :4] = -1
    logits, loss = tiny_model(idx, targets)
    direct = torch.nn.functional.cross_entropy(logits[:, 4:].reshape(-1, logits.size(-1)), idx[:, 4:].reshape(-1))
    assert torch.allclose(loss, direct, atol=1e-6)


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
    full, _ = tiny_model(idx)
    tiny_model.setup_kv_cache(batch_size=2)
    chunks = [tiny_model(idx[:, :10], pos=0)[0]]
    chunks += [tiny_model(idx[:, t : t + 1], pos=t)[0] for t in range(10, 20)]
    chunks.append(tiny_model(idx[:, 20:], pos=20)[0])  # a multi-token chunk after a cached prefix
    tiny_model.clear_kv_cache()
    assert torch.allclose(torch.cat(chunks, dim=1), full, atol=1e-5)


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
