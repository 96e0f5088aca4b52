"""lm-evaluation-harness on gptkit checkpoints: GptkitLM, the harness's model "gptkit", reads any checkpoint gptkit
reads (a folder, float or int8, a LoRA run's adapters, a nanoGPT / build-nanogpt .pt file) with gptkit's own loading,
scores continuations with scoring.py and generates with gptkit's continuous batching (inference/batching.py);
run_tasks runs harness tasks on a checkpoint.

Importing this module registers "gptkit" with the harness, so that from Python
    lm_eval.simple_evaluate(model="gptkit", model_args="ckpt=DIR", tasks=[...])
works once it is imported. The harness's own command line (lm-eval 0.4.13) finds models only in its own table, with
no plugin mechanism; this module runs that command line with "gptkit" registered:
    python -m gptkit.evaluation.harness --model gptkit --model_args ckpt=DIR --tasks hellaswag --batch_size 16
(--device and --batch_size are the harness's options there, its batch size 1 unless given; model_args takes dtype,
quantize, share_context and progress.)
"""

from collections import deque
from contextlib import contextmanager
from pathlib import Path

from gptkit.errors import GptkitError
from gptkit.options.shared import QUANTIZATIONS

try:
    import lm_eval
    from lm_eval.api.model import TemplateLM
    from lm_eval.api.registry import model_registry
    from lm_eval.models.utils import handle_stop_sequences, normalize_gen_kwargs
    from lm_eval.utils import get_rolling_token_windows, make_disjoint_window
except ImportError as e:
    raise GptkitError(
        f"lm-evaluation-harness is not installed ({e.msg}): install gptkit with its evals extra, "
        "pip install 'gptkit[evals]'"
    ) from None

DEFAULT_BATCH_SIZE = 16  # rows a forward pass, and sequences generated at once
MAX_GEN_TOKS = 256  # tokens a generation task may generate when it does not say: the harness's models' default


@contextmanager
def tracked(enabled: bool, description: str):
    """A progress(done, total) callback drawing a bar on stderr while the block runs (none unless enabled)."""
    from gptkit.progress import count_bar, track

    with count_bar(enabled=enabled) as bar:
        yield track(bar, description, "requests")


def rows_of(batch_size: int | str | None, max_batch_size: int | None) -> int:
    """Rows a batch: batch_size as the harness gives it (a number, or "auto" / "auto:N", which here mean the
    default, at most max_batch_size)."""
    if batch_size is None or isinstance(batch_size, str) and batch_size.startswith("auto"):
        return min(DEFAULT_BATCH_SIZE, max_batch_size or DEFAULT_BATCH_SIZE)
    try:
        rows = int(batch_size)
    except ValueError:
        raise GptkitError(f"batch size {batch_size!r} is not a number of rows (nor auto)") from None
    if rows < 1:
        raise GptkitError(f"the batch size must be at least 1, not {rows}")
    return rows


class GptkitLM(TemplateLM):
    """The harness's model "gptkit": model_args ckpt (a checkpoint gptkit reads), device and dtype (auto or a name,
    as gptkit's commands take them), quantize (int8, or none), share_context (scoring.py; default: on the CPU),
    progress (a bar on stderr a request type)."""

    def __init__(
        self,
        ckpt: str | Path,
        device: str | None = "auto",
        dtype: str = "auto",
        quantize: str | None = None,
        batch_size: int | str | None = DEFAULT_BATCH_SIZE,
        max_batch_size: int | None = None,
        share_context: bool | None = None,
        progress: bool = True,
    ):
        super().__init__()
        from gptkit.checkpoint.folder import read_metadata
        from gptkit.inference.chat_template import recorded_template
        from gptkit.inference.decode import load_for_decoding
        from gptkit.machine.runtime import pick_device, pick_dtype

        if quantize not in (None, *QUANTIZATIONS):
            raise GptkitError(f"quantize {quantize} is not supported: use {' or '.join(QUANTIZATIONS)}")
        self.ckpt = Path(ckpt)
        self._device = pick_device(device or "auto")
        self.dtype = pick_dtype(dtype or "auto", self._device)
        self.batch_rows = rows_of(batch_size, max_batch_size)
        self.share_context = share_context
        self.progress = progress
        self.model = load_for_decoding(self.ckpt, self._device, self.dtype, quantize, compile=False)
        self.template = recorded_template(read_metadata(self.ckpt), self.ckpt)  # for tasks run as chats

    @property
    def eot_token_id(self) -> int:
        from gptkit.data.tokenizer import EOT_TOKEN

        return EOT_TOKEN

    @property
    def max_length(self) -> int:
        return self.model.config.block_size

    @property
    def tokenizer_name(self) -> str:
        return "gpt2"

    def tok_encode(self, string: str, add_special_tokens: bool | None = None, **kwargs) -> list[int]:
        """GPT-2's tokens of string, <|endoftext|> in it read as the special token (as Hugging Face's GPT-2 tokenizer
        does, which adds no token of its own)."""
        from gptkit.data.tokenizer import encode

        return encode(string)

    def _loglikelihood_tokens(self, requests, disable_tqdm: bool = False) -> list[tuple[float, bool]]:
        """requests: ((context, continuation), context tokens, continuation tokens), as TemplateLM encodes them."""
        from gptkit.evaluation.scoring import score_requests

        with tracked(self.progress and not disable_tqdm, "loglikelihood") as progress:
            answers = score_requests(
                self.model, [(c, t) for _, c, t in requests], self.batch_rows, self.share_context, progress
            )
        for (strings, _, _), answer in zip(requests, answers):
            self.cache_hook.add_partial("loglikelihood", strings, answer)
        return answers

    def loglikelihood_rolling(self, requests, disable_tqdm: bool = False) -> list[float]:
        """The log-likelihood of each whole text, in windows of the model's context, each token predicted once with
        as much context as fits (the harness's rolling windows)."""
        from gptkit.evaluation.scoring import score_requests

        windows, owners = [], []
        for i, (text,) in enumerate(request.args for request in requests):
            tokens = self.tok_encode(text)
            for window in get_rolling_token_windows(tokens, self.prefix_token_id, self.max_length, context_len=1):
                windows.append(make_disjoint_window(window))
                owners.append(i)
        with tracked(self.progress and not disable_tqdm, "loglikelihood_rolling") as progress:
            scores = score_requests(self.model, windows, self.batch_rows, False, progress)
        totals = [0.0] * len(requests)
        for i, (logprob, _) in zip(owners, scores):
            totals[i] += logprob
        for request, total in zip(requests, totals):
            self.cache_hook.add_partial("loglikelihood_rolling", request.args, total)
        return totals

    def generate_until(self, requests, disable_tqdm: bool = False) -> list[str]:
        """Each request's context continued until one of its stop texts (or <|endoftext|>), at most its max_gen_toks
        tokens; greedy unless it asks for sampling. The context keeps its last tokens that leave room for those."""
        from gptkit.data.tokenizer import EOT_TEXT
        from gptkit.inference.sampling import Sampling

        jobs = []
        for context, gen_kwargs in (request.args for request in requests):
            kwargs = normalize_gen_kwargs(gen_kwargs, MAX_GEN_TOKS)
            stops = tuple(handle_stop_sequences(kwargs.pop("until", None), eos=EOT_TEXT))
            max_tokens = kwargs["max_gen_toks"]
            if max_tokens >= self.max_length:
                raise GptkitError(
                    f"a task asks for {max_tokens} generated tokens, which leaves no room for its prompt in the "
                    f"model's context of {self.max_length}"
                )
            prompt = self.tok_encode(context)[-(self.max_length - max_tokens) :] or [self.eot_token_id]
            sampling = Sampling(temperature=0)
            if kwargs["do_sample"] and kwargs["temperature"] > 0:
                sampling = Sampling(kwargs["temperature"], kwargs.get("top_k"), kwargs.get("top_p"))
            jobs.append((prompt, max_tokens, sampling, stops))
        with tracked(self.progress and not disable_tqdm, "generate_until") as progress:
            texts = generate_texts(self.model, jobs, self.batch_rows, progress)
        for request, text in zip(requests, texts):
            self.cache_hook.add_partial("generate_until", request.args, text)
        return texts

    def apply_chat_template(self, chat_history: list[dict[str, str]], add_generation_prompt: bool = True) -> str:
        """The messages in the checkpoint's chat template (its gptkit.json's, else gptkit's default); without
        add_generation_prompt, the last message is an assistant reply begun, left open."""
        from gptkit.inference.chat_template import format_prompt, message_text

        messages = [(m["role"], m["content"]) for m in chat_history]
        if add_generation_prompt:
            return format_prompt(self.template, messages)
        *before, (role, content) = messages
        begun = "".join(message_text(self.template, r, c) for r, c in before)
        if role != "assistant":
            return begun + message_text(self.template, role, content)
        return begun + self.template["assistant"].split("{content}")[0] + content

    def chat_template(self, chat_template: bool | str = False) -> str:
        from gptkit.inference.chat_template import jinja_template

        return jinja_template(self.template) if chat_template else ""


def generate_texts(model, jobs: list[tuple], max_batch: int, progress) -> list[str]:
    """The text each job, (prompt tokens, max tokens, Sampling, stop texts), generates: the jobs run through
    continuous batching, at most max_batch at once, in this thread."""
    import torch

    from gptkit.inference.batching import Done, Engine, Failed, Job, Token

    engine = Engine(model, max_batch)
    texts, failures, finished = [""] * len(jobs), [], []

    def receiver(i: int):
        def emit(event):
            if isinstance(event, Token | Done):
                texts[i] += event.text
            if isinstance(event, Failed):
                failures.append(event.error)
            if isinstance(event, Done | Failed):
                finished.append(i)
                progress(len(finished), len(jobs))

        return emit

    waiting = deque(Job(prompt, n, sampling, receiver(i), stops) for i, (prompt, n, sampling, stops) in enumerate(jobs))
    with torch.inference_mode():
        while waiting or engine.rows:
            while waiting and len(engine.rows) < max_batch:
                engine.join(waiting.popleft())
            if engine.rows:
                engine.step()
            if failures:
                raise failures[0]
    return texts


def task_manager(tasks: list[str], include_path: str | Path | None):
    """The harness's index of tasks for tasks: include_path's own when it holds them all (indexing the harness's
    thousands of task files takes many seconds), else the harness's with include_path's over it. A name neither
    holds is one line."""
    from lm_eval.tasks import TaskManager

    if include_path is not None:
        if not Path(include_path).is_dir():
            raise GptkitError(f"the include path {include_path} is not a folder of task files")
        own = TaskManager(include_path=str(include_path), include_defaults=False)
        if all(name in own.all_subtasks for name in tasks):
            return own
    manager = TaskManager(include_path=None if include_path is None else str(include_path))
    unknown = [name for name in tasks if name not in manager.all_tasks and not Path(name).is_file()]
    if unknown:
        where = f" nor in {include_path}" if include_path is not None else ""
        raise GptkitError(
            f"no task named {', '.join(unknown)} in lm-evaluation-harness{where}: `lm-eval ls tasks` lists them"
        )
    return manager


def summary(results: dict, log_samples: bool) -> dict:
    """What the harness's results hold for a reader: each task's (and group's) metrics by name ("acc" for the
    harness's "acc,none"; a stderr it could not compute is left out), few-shot count and examples scored."""
    tasks = {}
    for name, values in results["results"].items():
        metrics = {
            key.removesuffix(",none"): value
            for key, value in values.items()
            if "," in key and isinstance(value, int | float)
        }
        examples = results.get("n-samples", {}).get(name, {}).get("effective")
        tasks[name] = {"metrics": metrics, "num_fewshot": results.get("n-shot", {}).get(name), "examples": examples}
    out = {"lm_eval_version": lm_eval.__version__, "tasks": tasks}
    if log_samples:
        out["samples"] = results["samples"]
    return out


def run_tasks(
    checkpoint: str | Path,
    tasks: list[str],
    num_fewshot: int | None = None,
    limit: float | None = None,
    include_path: str | Path | None = None,
    batch_size: int = DEFAULT_BATCH_SIZE,
    device: str = "auto",
    dtype: str = "auto",
    quantize: str | None = None,
    apply_chat_template: bool = False,
    log_samples: bool = False,
    progress: bool = True,
) -> dict:
    """lm-evaluation-harness's tasks (names, as `lm-eval ls tasks` lists them or include_path's task files define
    them) on checkpoint, through GptkitLM: {"lm_eval_version", "tasks": {name: {"metrics", "num_fewshot",
    "examples"}}, "settings"}, with the harness's per-example "samples" when log_samples. num_fewshot and limit (a
    count, or a fraction of each task) as the harness takes them; apply_chat_template runs each prompt as a chat in
    the checkpoint's template. Datasets come as the harness fetches them (HF_DATASETS_OFFLINE honoured); one that
    cannot be read is one line."""
    if not tasks:
        raise GptkitError("no tasks given: name at least one (`lm-eval ls tasks` lists them)")
    manager = task_manager(tasks, include_path)
    lm = GptkitLM(checkpoint, device, dtype, quantize, batch_size, share_context=None, progress=progress)
    try:
        results = lm_eval.simple_evaluate(
            model=lm,
            tasks=list(tasks),
            num_fewshot=num_fewshot,
            limit=limit,
            task_manager=manager,
            log_samples=log_samples,
            apply_chat_template=apply_chat_template,
        )
    except OSError as e:  # datasets' errors: offline without the data, a file missing, the hub unreachable
        raise GptkitError(
            f"the data of {', '.join(tasks)} could not be read: {e} (the harness downloads it from the Hugging Face "
            "hub once; offline, it must be in the datasets cache already)"
        ) from None
    out = summary(results, log_samples)
    settings = {"device": str(lm.device), "dtype": str(lm.dtype).removeprefix("torch."), "batch_size": lm.batch_rows}
    return {**out, "settings": {**settings, "quantize": quantize, "apply_chat_template": apply_chat_template}}


model_registry.register("gptkit", target="gptkit.evaluation.harness:GptkitLM")

if __name__ == "__main__":
    from lm_eval.__main__ import cli_evaluate

    cli_evaluate()
