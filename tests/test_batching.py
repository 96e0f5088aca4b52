"""The decoding engine of gptkit serve, driven step by step in the test's thread (fp32 on the CPU)."""

from dataclasses import dataclass, field

import pytest
import torch
from conftest import lively

from gptkit.data.tokenizer import EOT_TOKEN, encode
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
    """Join jobs to the batch (at one step), then step until every row is done."""
    engine.join(*jobs)
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


def test_prompts_of_one_length_that_join_together_are_prefilled_in_one_pass(model):
    """Each distinct prompt length a pass (the rows of a pass stored in their own cache rows), the prompt-scoring job
    a pass of its own; every row's tokens are those it draws alone."""
    prompts = ["Once upon a time", "It was the best", "Dear Sir,", "Why", "Once upon a time"]
    lengths = [len(encode(prompt)) for prompt in prompts]
    assert lengths[0] == lengths[1] != lengths[2]
    solo = []
    for prompt in prompts:
        alone, events = job(prompt, 12)
        decode(Engine(model, 1), alone)
        solo.append(events)
    jobs = [job(prompt, 12, prompt_logprobs=i == 4) for i, prompt in enumerate(prompts)]
    engine, passes = Engine(model, len(jobs)), []
    hook = model.register_forward_pre_hook(lambda module, args: passes.append(tuple(args[0].shape)))
    try:
        with torch.inference_mode():
            engine.join(*(each for each, _ in jobs))
    finally:
        hook.remove()
    by_length = [(lengths[:4].count(n), n) for n in set(lengths[:4])]
    assert sorted(passes) == sorted([*by_length, (1, lengths[4])])
    decode(engine)
    assert [events for _, events in jobs[:4]] == solo[:4]
    assert isinstance(jobs[4][1][0], PromptLogprobs) and jobs[4][1][1:] == solo[4]


# --- a request's lifetime in the batch -------------------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class Scripted(Sampling):
    """Draws the tokens of script in turn, whatever the logits: a job that ends where the test says. Its settings
    (Sampling's defaults) are the only ones of their kind in the batch, so the engine draws it in a call of its own;
    eq=False keeps Sampling's hash, which leaves out the script and what was drawn."""

    script: tuple[int, ...] = ()
    drawn: list = field(default_factory=list)

    def next(self, logits: torch.Tensor) -> torch.Tensor:
        self.drawn.append(self.script[len(self.drawn)])
        return torch.tensor([self.drawn[-1]])


# the job's max_tokens and stop texts, and the Done it gets (None: its client goes before its third step)
ENDINGS = {
    "stop text": (20, ("\n\n",), Done("stop", "", 4)),
    "end of text": (20, (), Done("stop", "", 5)),
    "max_tokens": (3, (), Done("length", "", 3)),
    "client gone": (20, (), None),
}
SCRIPT = (*encode(" one two\n\nthree"), EOT_TOKEN, *encode(" on and on" * 5))  # " one", " two", "\n", "\n", ...


@pytest.fixture(scope="module")
def solo(model) -> dict[str, list]:
    """The events of the jobs that run beside the ending one, each decoded alone."""
    events = {}
    for prompt, max_tokens in (("Once upon a time", 30), ("It was", 12)):
        alone, events[prompt] = job(prompt, max_tokens)
        decode(Engine(model, 1), alone)
    return events


@pytest.mark.parametrize("first", [True, False], ids=["ending in row 0", "ending in row 1"])
@pytest.mark.parametrize("ending", list(ENDINGS))
def test_a_finished_row_leaves_at_the_next_step_and_the_next_request_takes_its_cache_row(model, solo, ending, first):
    """A job that ends (stop text, <|endoftext|>, max_tokens) gets one Done and nothing after it, one whose client is
    gone gets nothing more; either way the step that ends it runs the model without its row, and the next request
    takes its cache row (the only one free), decoding there as it does alone."""
    max_tokens, stop, done = ENDINGS[ending]
    leaving, events = job("Hello", max_tokens, Scripted(script=SCRIPT), stop=stop)
    other, other_events = job("Once upon a time", 30)
    engine = Engine(model, 2)  # two rows: the next request fits only in the row freed
    rows_a_pass = []
    hook = model.register_forward_pre_hook(lambda module, args: rows_a_pass.append(args[0].size(0)))
    try:
        with torch.inference_mode():
            for each in (leaving, other) if first else (other, leaving):
                engine.join(each)
            while any(row.job is leaving for row in engine.rows):
                if done is None and engine.steps == 2:
                    leaving.cancelled, sent = True, len(events)
                rows_a_pass.clear()
                engine.step()
            assert rows_a_pass == [1] and [row.job for row in engine.rows] == [other]  # it left at this step
            following, following_events = job("It was", 12)
            engine.join(following)
            assert [row.job for row in engine.rows] == [other, following]
            decode(engine)
    finally:
        hook.remove()
    if done is None:
        assert len(events) == sent  # nothing after the client went
    else:
        assert events[-1] == done and sum(isinstance(event, Done) for event in events) == 1
    tokens = events if done is None else events[:-1]
    assert tokens and all(isinstance(event, Token) for event in tokens)
    assert other_events == solo["Once upon a time"] and following_events == solo["It was"]


def test_a_job_whose_receiver_raises_leaves_at_that_step_and_is_sent_nothing_more(model, solo):
    attempts = []

    def gone(event):  # the second Token finds the client gone
        attempts.append(event)
        if len(attempts) == 2:
            raise ConnectionResetError("the client went away")

    leaving = Job(encode("Hello"), 20, GREEDY, gone)
    other, other_events = job("Once upon a time", 30)
    engine = Engine(model, 2)
    with torch.inference_mode():
        engine.join(leaving)
        engine.join(other)
        engine.step()
        engine.step()
        assert leaving.cancelled and [row.job for row in engine.rows] == [other]
        following, following_events = job("It was", 12)
        decode(engine, following)
    assert len(attempts) == 2 and all(isinstance(event, Token) for event in attempts)
    assert other_events == solo["Once upon a time"] and following_events == solo["It was"]
