"""Request and response bodies of the REST API (pydantic: validated, and documented in /docs).

The constraints here are the server's real ones, so that a request the document allows is a
request the server answers (the schemathesis test checks both directions).
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    create_model,
    field_validator,
    model_validator,
)

# The characters str.strip() removes (str.isspace()), spelled out: JSON Schema patterns are
# ECMA-262 regexes, whose \s is another set, and encode_text refuses a text of these alone.
SPACE = r"\t-\r\x1c-\x20\x85\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000"
HAS_WORD = f"[^{SPACE}]"
# Two comma-separated labels at least, each with a character that is not white space.
TWO_LABELS = f"[^,{SPACE}][^,]*,[\\s\\S]*[^,{SPACE}]"


QueryText = Annotated[str, Field(pattern=HAS_WORD, description="Text with at least one non-space character.")]


def _whole_float_as_int(value):
    return int(value) if isinstance(value, float) and value.is_integer() else value


def integer(**bounds):
    """An int field within `bounds` (ge, le) that also takes 10.0: JSON Schema counts it an
    integer, strict pydantic alone would not. (The bounds must come before the validator, or
    the schema shows pydantic's names for them.)"""
    return Annotated[int, Field(**bounds), BeforeValidator(_whole_float_as_int)]


# A base64 image: OpenAPI's format `byte`, with what it holds in JSON Schema's own keywords.
Base64Image = Annotated[str, Field(min_length=1, json_schema_extra={
    "format": "byte", "contentEncoding": "base64", "contentMediaType": "image/*"})]


class Error(BaseModel):
    detail: str = Field(description="What was wrong, in one line.")


class Hit(BaseModel):
    id: int
    score: float
    path: str
    caption: str | None = None
    modality: str = Field(description="What the item is: image or audio.")
    url: str = Field(description="Where the server serves the item's file.")


# Request bodies are strict: a value of another JSON type than the schema's is refused, not coerced.
STRICT = ConfigDict(strict=True)


class SearchRequest(BaseModel):
    model_config = STRICT

    text: QueryText = Field(description="A sentence describing the images to find.")
    k: integer(ge=1, le=1000) = 10


class SearchResponse(BaseModel):
    query: str
    hits: list[Hit]


class EmbedTextRequest(BaseModel):
    model_config = STRICT

    texts: list[QueryText] = Field(min_length=1, max_length=1024)


class EmbedResponse(BaseModel):
    model_id: str
    dim: int
    embeddings: list[list[float]]


class Label(BaseModel):
    label: str
    probability: float


class ClassifyResponse(BaseModel):
    labels: list[Label]


class Health(BaseModel):
    status: Literal["ok", "loading", "failed"] = Field(description="ok: ready to answer queries.")
    ready: bool
    model_loaded: bool
    index_loaded: bool
    model_id: str = Field(description="From the index manifest.")
    dim: int
    items: int | None = Field(None, description="Items in the loaded index (null until it is loaded).")
    kind: str | None = Field(None, description="The vector index kind (flat, hnsw, ...).")
    index_generation: int = Field(0, description="1 after the first load, +1 for every reload from disk.")
    index_loaded_at: float | None = Field(None, description="When the index now served was loaded (Unix time).")
    error: str | None = Field(None, description="Why loading failed, or why the last reload failed (the "
                                                   "index loaded before it still serves).")
    generator_loaded: bool = Field(False, description="Whether a generative model (captioner, chat or "
                                                      "text-to-image) is loaded.")
    modalities: list[str] | None = Field(None, description="What the served model embeds (image, text, audio): "
                                                            "/search/audio needs audio (null until it is loaded).")


class KnnHit(BaseModel):
    id: int
    similarity: float
    url: str
    caption: str
    image_path: str


class KnnRequest(BaseModel):
    """clip-retrieval's /knn-service body, as its ClipClient sends it. Options polymodal has no use
    for (safety model, violence detector, aesthetic weighting, mclip) are accepted and ignored."""

    model_config = ConfigDict(strict=True, extra="ignore", json_schema_extra={"anyOf": [
        {"properties": {name: {"type": kind}}, "required": [name]}
        for name, kind in (("text", "string"), ("image", "string"), ("embedding_input", "array"))]})

    text: QueryText | None = None
    image: Base64Image | None = Field(None, description="A base64-encoded image file.")
    image_url: None = Field(None, description="Not supported: the server fetches nothing (send `image`).")
    embedding_input: list[Annotated[float, Field(allow_inf_nan=False)]] | None = None
    modality: Literal["image"] = Field("image", description="What to search: this index holds images.")
    num_images: integer(ge=1, le=10000) = 40
    num_result_ids: integer(ge=1) | None = None
    indice_name: str | None = None
    deduplicate: bool = True
    use_safety_model: bool = False
    use_violence_detector: bool = False
    use_mclip: bool = False
    aesthetic_score: integer() | None = None
    aesthetic_weight: float | None = None

    @field_validator("image_url", mode="before")
    @classmethod
    def _no_fetching(cls, value):
        if value is not None:
            raise ValueError("image_url is not supported (the server fetches nothing); send 'image' as base64")
        return value

    @model_validator(mode="after")
    def _one_query(self):
        if self.text is None and self.image is None and self.embedding_input is None:
            raise ValueError("give one of text, image (base64) or embedding_input")
        return self


def knn_request_for(dim: int) -> type[KnnRequest]:
    """KnnRequest whose embedding_input must have the index's dimension."""
    vector = Annotated[list[Annotated[float, Field(allow_inf_nan=False)]], Field(min_length=dim, max_length=dim)]
    return create_model("KnnRequest", __base__=KnnRequest, embedding_input=(vector | None, None))


# -- generation: /caption and /chat ------------------------------------------------------------------

MAX_NEW_TOKENS = 256  # the most tokens one caption or answer may ask for
CAPTION_MAX_TOKENS = 32  # /caption's default
MAX_TURNS = 64
MAX_TURN_CHARS = 4000


class Caption(BaseModel):
    file: str = Field(description="The upload's file name.")
    caption: str


class CaptionResponse(BaseModel):
    captions: list[Caption] = Field(description="One per uploaded image, in the order sent.")


def _has_text(text: str) -> str:
    if not text.strip():
        raise ValueError("empty text: a turn needs at least one character that is not white space")
    return text


# The pattern documents the rule; the validator says it in words (a pattern error would quote the regex).
TurnText = Annotated[str, Field(max_length=MAX_TURN_CHARS, json_schema_extra={"pattern": HAS_WORD}),
                     AfterValidator(_has_text)]


ROLES = ("user", "assistant")


class Message(BaseModel):
    model_config = STRICT

    role: Literal["user", "assistant"]
    content: TurnText


class ChatRequest(BaseModel):
    model_config = STRICT

    image: Base64Image = Field(description="A base64-encoded image file: what the conversation is about.")
    messages: list[Message] = Field(min_length=1, max_length=MAX_TURNS, description=(
        "The conversation so far, oldest first: turns alternate user, assistant, user, ... and end with the "
        "user's question (JSON Schema cannot say which turn comes where: such a conversation is a 422)."))
    stream: bool = Field(True, description="true: server-sent events, one per piece of the answer, then "
                                           "`event: done` with the whole answer; false: one JSON answer.")
    max_tokens: integer(ge=1, le=MAX_NEW_TOKENS) = 64

    @model_validator(mode="after")
    def _alternates_and_ends_with_a_question(self):
        for k, turn in enumerate(self.messages):
            if turn.role != ROLES[k % 2]:
                raise ValueError(f"messages: turn {k} is the {turn.role}'s, but turns alternate user, assistant, "
                                 "... from the user's first question")
        if self.messages[-1].role != "user":
            raise ValueError("messages: the last turn must be the user's question")
        return self


class ChatResponse(BaseModel):
    answer: str


# -- generation: /generate (text to image) ---------------------------------------------------------

MAX_GENERATED = 16  # images per request
MAX_GENERATE_STEPS = 250  # denoising steps per request: a server answers in seconds, not minutes
SCHEDULERS = ("ddpm", "ddim", "dpm++", "euler")


class GenerateRequest(BaseModel):
    model_config = STRICT

    prompt: TurnText = Field(description="What to draw, e.g. 'a red circle left of a blue square'.")
    n: integer(ge=1, le=MAX_GENERATED) = 4
    steps: integer(ge=1, le=MAX_GENERATE_STEPS) = 25
    guidance: float = Field(3.0, ge=0, le=50, allow_inf_nan=False,
                            description="Classifier-free guidance scale (<= 1: none).")
    seed: integer(ge=0, le=2**32 - 1) = 0  # exact as a JSON number (a float past 2**53 is not)
    scheduler: Literal[SCHEDULERS] = Field("dpm++", description="The sampler: DDPM, DDIM, DPM-Solver++ or Euler.")


class GenerateResponse(BaseModel):
    prompt: str
    images: list[Base64Image] = Field(description="PNG files, base64-encoded, in the order sampled.")
