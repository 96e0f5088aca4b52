"""The decoding engine of gptkit serve, driven step by step in the test's thread (fp32 on the CPU)."""

import pytest
import torch
from conftest import lively

from gptkit.data.tokenizer import encode
from gptkit.inference.batching import CACHE_STEP, Done, Engine, Failed, Job, PromptLogprobs, Token
from gptkit.inference.sampling import Sampling
from gptkit.model.config import GPTConfig

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
    length = engine.cache.length
    made, zeros = [], torch.zeros

    def second_layer_fails(*args, **kwargs):  # the allocation fails once the first layer has its new keys
        if made:
            raise torch.OutOfMemoryError("CUDA out of memory")
        made.append(args)
        return zeros(*args, **kwargs)

    monkeypatch.setattr(torch, "zeros", second_layer_fails)
    longer, longer_events = job("It was", 2 * CACHE_STEP)  # needs a longer cache
    decode(engine, longer)
    monkeypatch.undo()
    assert made and len(longer_events) == 1 and isinstance(longer_events[0], Failed)
    assert isinstance(longer_events[0].error, torch.OutOfMemoryError)
    assert engine.cache.length == length
    assert events == solo_events and len(tokens_of(events)) == 30
    # the cache grows at the next request that needs it
    again, again_events = job("It was", 2 * CACHE_STEP)
    decode(engine, again)
    solo_again, solo_again_events = job("It was", 2 * CACHE_STEP)
    decode(Engine(model, 2), solo_again)
    assert engine.cache.length > length and again_events == solo_again_events


def test_unseeded_rows_of_equal_settings_draw_together_and_seeded_rows_alone(model, monkeypatch):
    """One call of the sampler a step for the unseeded rows that share their settings, one for each other row; each
    row's tokens are those it draws alone."""
    prompts = ["Once upon a time", "Once upon a time", "ROMEO:", "Dear Sir,", "1 2 3", "Why"]

    def samplings() -> list[Sampling]:
        seeded = [Sampling(0.9, top_p=0.95, generator=torch.Generator().manual_seed(seed)) for seed in (1, 2)]
        top_1 = Sampling(1.0, top_k=1)  # draws the greedy token: which row of the call gets which token shows
        return [*seeded, top_1, top_1, top_1, GREEDY]  # the seeded rows' settings are equal, their generators not

    solo = []
    for prompt, sampling in zip(prompts, samplings()):
        alone, events = job(prompt, 20, sampling)
        decode(Engine(model, 1), alone)
        solo.append(events)
    assert solo[0] != solo[1]  # the same prompt, another seed

    engine = Engine(model, len(prompts))
    jobs = [job(prompt, 20, sampling) for prompt, sampling in zip(prompts, samplings())]
    rows_a_call, draw = [], Sampling.next

    def counted(sampling: Sampling, logits: torch.Tensor) -> torch.Tensor:
        rows_a_call.append(logits.size(0))
        return draw(sampling, logits)

    monkeypatch.setattr(Sampling, "next", counted)
    with torch.inference_mode():
        for each, _ in jobs:
            engine.join(each)
        engine.step()
    assert sorted(rows_a_call) == [1, 1, 1, 3]
    decode(engine)
    assert [events for _, events in jobs] == solo


def test_no_tokens_asked_for_runs_no_model_without_prompt_logprobs(model):
    calls = []
    hook = model.register_forward_pre_hook(lambda module, args: calls.append(args))
    try:
        engine = Engine(model, 2)
        nothing, events = job("Once upon a time", 0)
        decode(engine, nothing)
        assert events == [Done("length", "", 0)] and not calls and not engine.rows
        scored, scored_events = job("Once upon a time", 0, prompt_logprobs=True)
        decode(engine, scored)
        assert len(calls) == 1 and isinstance(scored_events[0], PromptLogprobs)
        assert scored_events[1:] == [Done("length", "", 0)]
    finally:
        hook.remove()
