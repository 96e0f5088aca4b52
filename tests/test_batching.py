"""The decoding engine of gptkit serve, driven step by step in the test's thread (fp32 on the CPU)."""

import pytest
import torch
from conftest import lively

import gptkit.model
from gptkit.batching import CACHE_STEP, Engine, Failed, Job, Token
from gptkit.config import GPTConfig
from gptkit.sample import Sampling
from gptkit.tokenizer import encode

GREEDY = Sampling(temperature=0)


@pytest.fixture(scope="module")
def model():
    """A model whose context holds several steps of the cache, so that the cache grows while rows are in flight."""
    return lively(GPTConfig(n_layer=2, n_head=4, n_embd=64, block_size=4 * CACHE_STEP, vocab_size=50257))


def job(prompt: str, max_tokens: int, sampling: Sampling = GREEDY, **settings) -> tuple[Job, list]:
    """A Job and the list its events go to."""
    events = []
    return Job(encode(prompt), max_tokens, sampling, events.append, **settings), events


def tokens_of(events: list) -> list[int]:
    return [event.token for event in events if isinstance(event, Token)]


@torch.inference_mode()
def decode(engine: Engine, *jobs: Job):
    """Join jobs to the batch, then step until every row is done."""
    for each in jobs:
        engine.join(each)
    while engine.rows:
        engine.step()


def test_a_cache_that_fails_to_grow_leaves_the_rows_in_flight_as_they_were(model, monkeypatch):
    solo, solo_events = job("Once upon a time", 30)
    decode(Engine(model, 2), solo)
    engine = Engine(model, 2)
    first, events = job("Once upon a time", 30)
    with torch.inference_mode():
        engine.join(first)
        for _ in range(5):
            engine.step()
    length = engine.cache_length
    made, kv_cache = [], gptkit.model.KVCache

    def second_layer_fails(k, v):  # the allocation fails once the first layer has its new cache
        if made:
            raise torch.OutOfMemoryError("CUDA out of memory")
        made.append(k)
        return kv_cache(k, v)

    monkeypatch.setattr(gptkit.model, "KVCache", second_layer_fails)
    longer, longer_events = job("It was", 2 * CACHE_STEP)  # needs a longer cache
    decode(engine, longer)
    monkeypatch.undo()
    assert made and len(longer_events) == 1 and isinstance(longer_events[0], Failed)
    assert isinstance(longer_events[0].error, torch.OutOfMemoryError)
    assert engine.cache_length == length
    assert events == solo_events and len(tokens_of(events)) == 30
    # the cache grows at the next request that needs it
    again, again_events = job("It was", 2 * CACHE_STEP)
    decode(engine, again)
    solo_again, solo_again_events = job("It was", 2 * CACHE_STEP)
    decode(Engine(model, 2), solo_again)
    assert engine.cache_length > length and again_events == solo_again_events
