"""OpenAI's HTTP API as pydantic models: what /v1/completions and /v1/chat/completions take, what they and /v1/models
answer (whole, or chunk by chunk in a stream), and the error a refused request gets."""

from typing import ClassVar

from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field, model_serializer

MAX_CHOICES = 128  # choices a request (prompts x n), OpenAI's limit of n
MAX_STOPS = 4  # stop texts a request, as OpenAI
MAX_LOGPROBS = 20  # top log-probabilities a token


# --- requests ---------------------------------------------------------------------------------------------------------


class StreamOptions(BaseModel):
    include_usage: bool = False


class Settings(BaseModel):
    """What both endpoints take: how many tokens, how they are drawn, where they stop, how they come back. The model
    is the served one whatever the request names; the UNSUPPORTED fields are refused unless left out or neutral."""

    UNSUPPORTED: ClassVar[dict] = {"presence_penalty": 0, "frequency_penalty": 0, "logit_bias": {}}  # their neutral

    model: str | None = None
    max_tokens: int | None = Field(None, ge=0)
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, gt=0, le=1)
    top_k: int | None = Field(None, ge=0)  # not OpenAI's: an extension
    n: int = Field(1, ge=1)
    stop: str | list[str] | None = None
    seed: int | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    user: str | None = None
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
    logit_bias: dict[str, float] | None = None

    @property
    def include_usage(self) -> bool:
        """A stream ends with a chunk of the token counts."""
        return self.stream_options is not None and self.stream_options.include_usage


class CompletionRequest(Settings):
    UNSUPPORTED: ClassVar[dict] = {"best_of": 1, "suffix": "", **Settings.UNSUPPORTED}

    prompt: str | list[str] | list[int] | list[list[int]]
    echo: bool = False
    logprobs: int | None = Field(None, ge=0, le=MAX_LOGPROBS)
    best_of: int | None = None
    suffix: str | None = None


class ContentPart(BaseModel):
    type: str
    text: str | None = None


class Message(BaseModel):
    role: str
    content: str | list[ContentPart] | None = None
    name: str | None = None


class ChatRequest(Settings):
    messages: list[Message] = Field(min_length=1)
    max_completion_tokens: int | None = Field(None, ge=0)
    logprobs: bool = False
    top_logprobs: int | None = Field(None, ge=0, le=MAX_LOGPROBS)


# --- answers ----------------------------------------------------------------------------------------------------------


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class Head(BaseModel):
    """What every answer and stream chunk of a request starts with."""

    id: str
    object: str
    created: int
    model: str


class CompletionLogprobs(BaseModel):
    tokens: list[str]
    token_logprobs: list[float | None]
    top_logprobs: list[dict[str, float] | None]
    text_offset: list[int]


class CompletionChoice(BaseModel):
    index: int
    text: str
    logprobs: CompletionLogprobs | None = None
    finish_reason: str | None = None


class Completion(Head):
    choices: list[CompletionChoice]
    usage: Usage


class CompletionChunk(Head):
    choices: list[CompletionChoice]


class TopLogprob(BaseModel):
    token: str
    logprob: float
    bytes: list[int]


class TokenLogprob(TopLogprob):
    top_logprobs: list[TopLogprob]


class ChatLogprobs(BaseModel):
    content: list[TokenLogprob]


class ChatMessage(BaseModel):
    role: str = "assistant"
    content: str


class ChatChoice(BaseModel):
    index: int
    message: ChatMessage
    logprobs: ChatLogprobs | None = None
    finish_reason: str | None = None


class ChatCompletion(Head):
    choices: list[ChatChoice]
    usage: Usage


class Delta(BaseModel):
    """What a chunk adds to a chat message; only the fields it has are sent (the last chunk's delta is {})."""

    role: str | None = None
    content: str | None = None

    @model_serializer
    def present(self) -> dict:
        return {name: value for name, value in (("role", self.role), ("content", self.content)) if value is not None}


class ChatChunkChoice(BaseModel):
    index: int
    delta: Delta
    logprobs: ChatLogprobs | None = None
    finish_reason: str | None = None


class ChatCompletionChunk(Head):
    choices: list[ChatChunkChoice]


class UsageChunk(Head):
    """A stream's last chunk, with stream_options.include_usage: no choices, the token counts."""

    choices: list = []
    usage: Usage


class ModelCard(BaseModel):
    id: str
    object: str = "model"
    created: int
    owned_by: str = "gptkit"


class ModelList(BaseModel):
    object: str = "list"
    data: list[ModelCard]


# --- errors -----------------------------------------------------------------------------------------------------------


class ErrorDetail(BaseModel):
    message: str
    type: str
    param: str | None = None
    code: str | None = None


class ErrorBody(BaseModel):
    error: ErrorDetail


class APIError(Exception):
    """A request the server refuses: status, and OpenAI's error fields."""

    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None):
        super().__init__(message)
        self.status, self.message, self.param, self.code = status, message, param, code


def error_body(status: int, message: str, param: str | None = None, code: str | None = None) -> ErrorBody:
    kind = "invalid_request_error" if status < 500 else "server_error"
    return ErrorBody(error=ErrorDetail(message=message, type=kind, param=param, code=code))


def error_response(status: int, message: str, param=None, code=None, headers=None) -> JSONResponse:
    """OpenAI's error JSON: {"error": {"message", "type", "param", "code"}}."""
    return JSONResponse(error_body(status, message, param, code).model_dump(), status_code=status, headers=headers)
