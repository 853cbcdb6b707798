"""The OpenAPI document tells the truth: schemathesis draws requests for every route from
/openapi.json and runs every check on each answer (no server error; only declared status codes,
content types and headers; bodies that match their schemas; every schema-valid request accepted
and invalid ones refused; auth enforced exactly where declared; unsupported methods refused), in
process against the ASGI app, with and without an API key, and statefully (search -> item file)."""

import base64
import io
import re
import time

import pytest
import torch
from search_helpers import make_index

schemathesis = pytest.importorskip("schemathesis")
from hypothesis import strategies as st  # noqa: E402
from PIL import Image  # noqa: E402
from schemathesis.config import SchemathesisConfig  # noqa: E402
from schemathesis.engine import Status, events  # noqa: E402

# schemathesis imports its OpenAPI machinery lazily, at the first schema; pytest's assertion
# rewriting then ast-parses those modules mid-run. On CPython 3.11.7 that parse fails ("AST
# constructor recursion depth mismatch", a CPython bug fixed in 3.11.8) once any earlier test in
# the same worker has caught a RecursionError. Importing them here parses them at collection.
from schemathesis.specs.openapi import schemas as _openapi_schemas  # noqa: E402, F401, I001

import polymodal  # noqa: E402
from polymodal.errors import DataError  # noqa: E402
from polymodal.modalities.image_files import decode_image_bytes  # noqa: E402
from polymodal.models.generative.chat import create_chat_model  # noqa: E402
from polymodal.server.app import ServerConfig, create_app  # noqa: E402

KEY = "s3cret"
EXAMPLES = 5  # per route and phase: enough for every status each route declares, and seconds to run


@st.composite
def image_files(draw) -> bytes:
    """Small image files of several formats, sizes and modes."""
    size = (draw(st.integers(1, 48)), draw(st.integers(1, 48)))
    mode = draw(st.sampled_from(["RGB", "L", "RGBA", "P"]))
    fmt = draw(st.sampled_from(["PNG", "JPEG", "BMP", "GIF", "WEBP"]))
    if fmt == "JPEG" and mode in ("RGBA", "P"):
        mode = "RGB"
    img = Image.new(mode, size, draw(st.integers(0, 255)) if mode in ("L", "P") else
                    tuple(draw(st.integers(0, 255)) for _ in mode))
    buf = io.BytesIO()
    img.save(buf, fmt)
    return buf.getvalue()


# JSON Schema cannot say "bytes that decode as an image". The document says it in OpenAPI's own
# terms: the upload part's `contentType: image/*`, and the base64 field's `format: byte` with
# `contentMediaType: image/*`. Schemathesis draws such values from the strategies registered for
# that media type and format, so its valid requests carry real images (unreadable ones are
# refused with the declared 400, tested in test_server.py).
schemathesis.openapi.media_type("image/png", image_files())
schemathesis.openapi.format("byte", image_files().map(lambda data: base64.b64encode(data).decode()))


def config(examples: int = EXAMPLES, **extra) -> SchemathesisConfig:
    return SchemathesisConfig.from_dict({"generation": {"max-examples": examples}, "seed": 11,
                                         "cache": {"enabled": False}, **extra})  # no .schemathesis/ in the tree


def ready_schema(app, cfg: SchemathesisConfig):
    schema = schemathesis.openapi.from_asgi("/openapi.json", app, config=cfg)  # starts the app's lifespan
    deadline = time.monotonic() + 60
    while not app.state.engine.ready:
        assert app.state.engine.error is None and time.monotonic() < deadline, app.state.engine.error
        time.sleep(0.02)
    return schema


@pytest.fixture(scope="module")
def built(tmp_path_factory, shapes_dir):
    model_dir, _, index = make_index(tmp_path_factory.mktemp("openapi"), shapes_dir, n=12)
    torch.manual_seed(0)
    chat = create_chat_model("shapes-chat-tiny", ["a red circle left of a blue square", "what colour is it ?"] * 4)
    return index, polymodal.load(model_dir), chat


@pytest.fixture(scope="module")
def loopback_api(built):
    """With a chat model (it captions too) behind /caption and /chat; the keyed server has none (404s)."""
    index, model, chat = built
    app = create_app(ServerConfig(index=str(index), max_upload_bytes=100_000), model=model, generator=chat)
    return ready_schema(app, config())


@pytest.fixture(scope="module")
def keyed_api(built):
    index, model, _ = built
    app = create_app(ServerConfig(index=str(index), host="0.0.0.0", api_key=KEY), model=model)
    # The coverage phase (three quarters of the time) walks the schemas, which the loopback run
    # has walked already; with a key, fuzzing and the stateful phase check what the key changes.
    return ready_schema(app, config(2 * EXAMPLES, auth={"openapi": {"APIKeyHeader": {"api_key": KEY}}},
                                    phases={"coverage": {"enabled": False}}))


def run_schemathesis(schema) -> tuple[int, list[str]]:
    """Every phase `schemathesis run` has (examples, coverage, fuzzing, stateful) with every check
    (pytest 9 breaks its pytest plugin's lazy schemas, so its engine runs here directly):
    how many requests were checked, and one line per failure or error."""
    checked, problems = 0, []
    for event in schemathesis.engine.from_schema(schema).execute():
        if isinstance(event, (events.ScenarioFinished, events.FuzzScenarioFinished)):
            for case_id, checks in event.recorder.checks.items():
                checked += 1
                case = event.recorder.cases[case_id].value
                problems += [f"{case.method} {case.formatted_path}: {check.name}: {check.failure_info.failure.title}"
                             for check in checks
                             if check.status == Status.FAILURE and not not_really_valid(case, check)
                             and not not_really_invalid(case, check)
                             and not beyond_json_schema(case, check, event.recorder.interactions.get(case_id))]
        elif isinstance(event, (events.NonFatalError, events.FatalError)):
            problems.append(f"error: {getattr(event, 'info', None) or event.exception!r}"[:300])
    return checked, sorted(set(problems))


def not_really_valid(case, check) -> bool:
    """A request schemathesis calls valid that the document refuses in words JSON Schema cannot
    check, or at all. Two kinds: a base64 `image` that is not an image (`contentMediaType` is an
    annotation, not an assertion: schemathesis's constants drawn from the app's source, such as
    "encoding", are valid base64); and a form whose required fields its coverage phase filled
    with "" whatever their schema says (schemathesis 4.32, `_generate_multipart_body_from_custom_strategies`;
    here /classify's `labels`, whose pattern "" fails)."""
    if check.name != "positive_data_acceptance" or not isinstance(case.body, dict):
        return False
    if isinstance(case.body.get("image"), str):
        try:
            decode_image_bytes(base64.b64decode(case.body["image"], validate=True), "image")
        except (ValueError, DataError):
            return True
    fields = next(iter(case.operation.body)).form_properties if case.operation.body else {}
    return any(value == "" and (fields.get(name, {}).get("minLength", 0) > 0
                                or not re.search(fields.get(name, {}).get("pattern", ""), ""))
               for name, value in case.body.items() if name in fields)


def beyond_json_schema(case, check, interaction) -> bool:
    """A request schemathesis calls valid that the server refuses rightly. /caption's array of files
    drawn as one value (schemathesis draws a field with an `encoding` content type from the image
    strategy registered above, whole), which travels without a file name: to any server a text
    field, not a file. A /chat conversation whose turns do not alternate user, assistant, ... from
    a user's first to a user's last (the document says so in words: no JSON Schema keyword says
    which item comes where), or that is longer than the model's context (the schema counts
    characters, the model tokens: a 413 that says so)."""
    if check.name != "positive_data_acceptance" or not isinstance(case.body, dict):
        return False
    if case.operation.path == "/caption":
        return not isinstance(case.body.get("file"), list)
    if case.operation.path != "/chat":
        return False
    response = interaction.response if interaction else None
    too_long = response is not None and response.status_code == 413 and b"too long" in response.content
    roles = [turn.get("role") if isinstance(turn, dict) else None for turn in case.body.get("messages") or []]
    alternating = roles == ["user", "assistant"] * (len(roles) // 2) + ["user"] * (len(roles) % 2)
    return too_long or not alternating or len(roles) % 2 == 0


def not_really_invalid(case, check) -> bool:
    """A request schemathesis calls schema-violating that no server can tell from a valid one: a
    multipart form field drawn as a non-string (an object, a list, a number) travels as its text,
    and form fields are text. (/classify's `labels` drawn as {"": [true, ...]} arrives as a string
    holding a comma: two labels, as the pattern allows.)"""
    if check.name != "negative_data_rejection" or case.media_type != "multipart/form-data":
        return False
    fields = next(iter(case.operation.body)).form_properties if case.operation.body else {}
    return isinstance(case.body, dict) and any(
        fields.get(name, {}).get("type") == "string" and not isinstance(value, (str, bytes))
        for name, value in case.body.items() if name != "file")


@pytest.mark.slow
def test_loopback_server_keeps_its_document(loopback_api):
    checked, problems = run_schemathesis(loopback_api)
    assert not problems and checked > 200, (checked, problems)


@pytest.mark.slow
def test_keyed_server_keeps_its_document(keyed_api):
    checked, problems = run_schemathesis(keyed_api)
    assert not problems and checked > 80, (checked, problems)


def test_security_is_declared_only_where_enforced(loopback_api, keyed_api):
    assert "securitySchemes" not in loopback_api.raw_schema.get("components", {})
    operations = {(path, method): op
                  for path, ops in keyed_api.raw_schema["paths"].items() for method, op in ops.items()}
    assert "security" not in operations[("/health", "get")]
    assert all("security" in op and "401" in op["responses"] for key, op in operations.items() if key[0] != "/health")
