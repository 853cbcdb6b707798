"""Text-to-image diffusion (issue 13): the saved pipeline is diffusers' own (its loader and its
__call__ give our images), every scheduler samples, bad requests get one clear line or a 4xx, and
the CLI and server generate."""

import base64
import io

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

pytest.importorskip("diffusers")
from polymodal.backends import load_model  # noqa: E402
from polymodal.cli import app  # noqa: E402
from polymodal.models.generative.diffusion import (  # noqa: E402
    SCHEDULERS,
    TextToImageModel,
    create_text_to_image,
    make_scheduler,
)

PROMPT = "a red circle left of a blue square"


@pytest.fixture(scope="module")
def made(tmp_path_factory):
    """A tiny untrained text-to-image model, and the directory it was saved to."""
    torch.manual_seed(0)
    out = tmp_path_factory.mktemp("t2i") / "pipeline"
    model = create_text_to_image("shapes-diffusion-tiny")
    model.save(out, extra={"note": "untrained"})
    return model, out


@pytest.fixture(scope="module")
def pipeline_dir(made):
    return made[1]


def pixels(image: Image.Image) -> np.ndarray:
    return np.asarray(image).astype(int)


def test_the_pipeline_round_trips_through_diffusers_own_loader(pipeline_dir):
    from diffusers import DDPMScheduler, DiffusionPipeline, StableDiffusionPipeline

    ours = load_model(pipeline_dir)
    assert isinstance(ours, TextToImageModel) and ours.meta["note"] == "untrained" and ours.image_size == 32
    theirs = DiffusionPipeline.from_pretrained(pipeline_dir)
    assert isinstance(theirs, StableDiffusionPipeline) and isinstance(theirs.scheduler, DDPMScheduler)
    for name in ("ddim", "dpm++"):
        theirs.scheduler = make_scheduler(name, theirs.scheduler.config)
        expected = theirs([PROMPT], num_inference_steps=4, guidance_scale=3.0, height=32, width=32,
                          generator=torch.Generator().manual_seed(5)).images[0]
        got = ours.generate(PROMPT, steps=4, guidance=3.0, seed=5, scheduler=name)[0]
        assert np.abs(pixels(expected) - pixels(got)).max() <= 1, name
    assert isinstance(load_model(pipeline_dir).pipeline.scheduler, DDPMScheduler)  # sampling did not change it


def test_a_model_samples_alike_before_and_after_a_reload(made):
    model, directory = made
    for name in SCHEDULERS:
        before = model.generate(PROMPT, steps=3, seed=2, scheduler=name)[0]
        after = load_model(directory).generate(PROMPT, steps=3, seed=2, scheduler=name)[0]
        assert np.abs(pixels(before) - pixels(after)).max() <= 1, name


def test_every_scheduler_samples_and_a_seed_repeats(pipeline_dir):
    model = load_model(pipeline_dir)
    for name in SCHEDULERS:
        images = model.generate([PROMPT, "two stars"], n=2, steps=3, seed=1, scheduler=name)
        assert len(images) == 4 and all(im.size == (32, 32) for im in images), name
    again = model.generate([PROMPT, "two stars"], n=2, steps=3, seed=1, scheduler="euler")
    assert all((pixels(a) == pixels(b)).all() for a, b in zip(images, again))
    assert (pixels(model.generate(PROMPT, steps=3, seed=2)[0]) != pixels(model.generate(PROMPT, steps=3)[0])).any()
    assert model.generate(PROMPT, steps=2, size=64)[0].size == (64, 64)


@pytest.mark.parametrize(("kwargs", "reason"), [
    ({"prompts": "   "}, "empty prompt"), ({"prompts": []}, "empty prompt"), ({"steps": 0}, "steps must be"),
    ({"size": 100_000}, "size must be"), ({"size": 60}, "size must be"), ({"scheduler": "plms"}, "unknown scheduler"),
    ({"n": 0}, "n must be"), ({"n": 1000}, "n must be"), ({"guidance": -1.0}, "guidance must be"),
])
def test_a_bad_request_is_one_clear_line(pipeline_dir, kwargs, reason):
    model = load_model(pipeline_dir)
    with pytest.raises(ValueError, match=reason) as err:
        model.generate(**{"prompts": PROMPT, "steps": 2, **kwargs})
    assert "\n" not in str(err.value)


def test_the_cli_generates_a_grid_and_refuses_bad_input(pipeline_dir, tmp_path):
    grid = tmp_path / "out" / "grid.png"
    run = CliRunner().invoke(app, ["generate", PROMPT, "two stars", "--model", str(pipeline_dir), "--n", "3",
                                   "--steps", "2", "--out", str(grid)])
    assert run.exit_code == 0, run.output
    assert Image.open(grid).size == (3 * 32, 2 * 32)
    assert [p.name for p in grid.parent.iterdir()] == ["grid.png"]  # no temporary file left
    for args, reason in [(["--steps", "0"], "steps"), (["--scheduler", "plms"], "unknown scheduler"),
                         (["--out", str(tmp_path / "grid.xyz")], "unknown image format")]:
        run = CliRunner().invoke(app, ["generate", PROMPT, "--model", str(pipeline_dir), *args])
        assert run.exit_code != 0 and reason in (run.output + str(run.exception)), args
    run = CliRunner().invoke(app, ["generate", PROMPT, "--model", str(tmp_path)])
    assert run.exit_code != 0
    run = CliRunner().invoke(app, ["generate", PROMPT, "--model", str(pipeline_dir), "--video"])
    assert run.exit_code != 0 and "text-to-video" in str(run.exception)


def test_a_non_pipeline_directory_is_refused(tmp_path):
    from polymodal.errors import CheckpointError
    from polymodal.models.generative.diffusion import load_text_to_image

    (tmp_path / "model_index.json").write_text('{"_class_name": "StableDiffusionPipeline"}')
    with pytest.raises(CheckpointError, match="not a loadable diffusers pipeline"):
        load_text_to_image(tmp_path)
    with pytest.raises(CheckpointError, match="no model_index.json"):
        load_text_to_image(tmp_path / "nothing")


@pytest.fixture(scope="module")
def draw_server(tmp_path_factory, shapes_dir, pipeline_dir):
    pytest.importorskip("fastapi")
    from fastapi.testclient import TestClient
    from search_helpers import make_index
    from test_server import wait_ready

    import polymodal
    from polymodal.server.app import ServerConfig, create_app

    model_dir, _, index = make_index(tmp_path_factory.mktemp("draw"), shapes_dir, n=8)
    config = ServerConfig(index=str(index), generator=str(pipeline_dir))
    with TestClient(create_app(config, model=polymodal.load(model_dir))) as client:
        assert wait_ready(client)["generator_loaded"]
        yield client, client.app.state.engine.generator


def test_post_generate_returns_the_models_images(draw_server):
    client, model = draw_server
    response = client.post("/generate", json={"prompt": PROMPT, "n": 2, "steps": 3, "seed": 4, "scheduler": "ddim"})
    assert response.status_code == 200, response.text
    body = response.json()
    got = [Image.open(io.BytesIO(base64.b64decode(png))) for png in body["images"]]
    expected = model.generate(PROMPT, n=2, steps=3, seed=4, scheduler="ddim")
    assert body["prompt"] == PROMPT and len(got) == len(expected) == 2
    # The server runs 1 torch thread, this test its own count: sums differ in order, pixels by a level or two.
    assert all(np.abs(pixels(g) - pixels(e)).max() <= 2 for g, e in zip(got, expected))


@pytest.mark.parametrize("body", [{"prompt": "  "}, {"prompt": PROMPT, "steps": 0}, {"prompt": PROMPT, "n": 100},
                                  {"prompt": PROMPT, "scheduler": "plms"}, {"prompt": PROMPT, "guidance": -1},
                                  {"prompt": PROMPT, "seed": -1}, {}])
def test_post_generate_refuses_bad_input(draw_server, body):
    response = draw_server[0].post("/generate", json=body)
    assert 400 <= response.status_code < 500 and response.json()["detail"]


def test_a_users_own_stable_diffusion_directory_loads_behind_the_same_generate(tmp_path):
    """A pipeline polymodal did not make (CLIP's text encoder, no polymodal.json) generates alike."""
    from diffusers import AutoencoderKL, PNDMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    from polymodal.models.generative.diffusion import load_minilm_text_encoder

    torch.manual_seed(0)
    _, tokenizer = load_minilm_text_encoder(16)  # any tokenizer with the encoder's vocabulary will do
    encoder = CLIPTextModel(CLIPTextConfig(vocab_size=tokenizer.vocab_size, hidden_size=32, intermediate_size=37,
                                           num_hidden_layers=2, num_attention_heads=4, max_position_embeddings=16))
    unet = UNet2DConditionModel(sample_size=8, in_channels=4, out_channels=4, block_out_channels=(32, 64),
                                layers_per_block=1, cross_attention_dim=32, attention_head_dim=8, norm_num_groups=32,
                                down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
                                up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"))
    vae = AutoencoderKL(block_out_channels=(32, 64), latent_channels=4, norm_num_groups=32,
                        down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2)
    StableDiffusionPipeline(vae=vae, text_encoder=encoder, tokenizer=tokenizer, unet=unet, scheduler=PNDMScheduler(),
                            safety_checker=None, feature_extractor=None,
                            requires_safety_checker=False).save_pretrained(tmp_path / "sd")
    model = load_model(tmp_path / "sd")
    assert isinstance(model, TextToImageModel) and model.config is None and model.image_size == 16
    images = model.generate(["a cat"], n=2, steps=2, scheduler="euler")
    assert [im.size for im in images] == [(16, 16)] * 2
    assert isinstance(load_model(tmp_path / "sd").pipeline.scheduler, PNDMScheduler)


SHAPES = ("circle", "square", "triangle")


def centred_objects(root, n: int = 512):
    """One large object, jittered about the centre of a 32 px image, captioned "a <colour> <shape>"
    and "a <shape>": the least a text-to-image model must learn, in a few minutes of CPU."""
    import random

    from polymodal.data.schema import Record, write_manifest
    from polymodal.data.synthetic.shapes import Obj, render

    rng, records = random.Random(0), []
    (root / "images").mkdir(parents=True)
    for i in range(n):
        shape, colour = rng.choice(SHAPES), rng.choice(("red", "blue"))
        render([Obj(colour, shape, "large", 16 + rng.uniform(-1, 1), 16 + rng.uniform(-1, 1))], 32).save(
            root / "images" / f"{i}.png")
        records.append(Record(id=str(i), split="train", image=f"images/{i}.png", text=[f"a {colour} {shape}",
                                                                                      f"a {shape}"]))
    write_manifest(root / "manifest.jsonl", records)
    return root


@pytest.mark.slow
def test_a_short_training_run_beats_the_unconditional_model_on_single_objects(tmp_path):
    from polymodal.evaluate.geneval import score

    data = centred_objects(tmp_path / "data")
    run = CliRunner().invoke(app, ["train-generator", str(data), "--out", str(tmp_path / "model"), "--model",
                                   "shapes-diffusion-tiny", "--vae-steps", "500", "--steps", "500", "--batch-size",
                                   "16", "--lr", "2e-3"])
    assert run.exit_code == 0, run.output
    model = load_model(tmp_path / "model")
    specs = [{"text": f"a {s}", "category": "single_object", "objects": [{"shape": s, "colour": None, "count": 1}],
              "relation": None} for s in SHAPES for _ in range(16)]
    prompted = score(model.generate([s["text"] for s in specs], steps=20, guidance=5.0), specs)["single_object"]
    unconditional = model.pipeline([""] * len(specs), num_inference_steps=20, guidance_scale=5.0, height=32, width=32,
                                   generator=torch.Generator().manual_seed(0)).images  # the empty prompt's branch
    baseline = score(unconditional, specs)["single_object"]
    assert prompted >= 0.45 and prompted >= baseline + 0.2, (prompted, baseline)


def test_a_scratch_text_encoder_trains_with_the_unet_and_reloads(tmp_path):
    from polymodal.models.generative.diffusion import PRESETS, DiffusionConfig
    from polymodal.train.generator import GeneratorTrainConfig, train_unet
    from polymodal.train.metrics import MetricsLog

    config = DiffusionConfig.from_dict({**PRESETS["shapes-diffusion-tiny"].to_dict(), "text_encoder": "scratch",
                                        "scratch_text_width": 32, "scratch_text_layers": 1})
    model = create_text_to_image(config)
    encoder = model.pipeline.text_encoder
    before = {name: p.detach().clone() for name, p in encoder.named_parameters()}
    mean, spread = torch.randn(16, 4, 16, 16), torch.full((16, 4, 16, 16), 0.1)  # stand-in latents
    captions = [[f"a {c} circle"] for c in ("red", "blue")] * 8
    cfg = GeneratorTrainConfig(data="-", out=str(tmp_path), steps=10, batch_size=8, lr=1e-2, ema_decay=0.0,
                               progress=False)
    train_unet(model, mean, spread, captions, cfg, "cpu", MetricsLog(tmp_path, enabled=False, resume=False))
    moved = [n for n, p in encoder.named_parameters() if not torch.allclose(p, before[n])]
    assert moved, "the scratch text encoder did not learn with the UNet"
    model.save(tmp_path / "model")
    reloaded = load_model(tmp_path / "model")
    assert reloaded.config.text_encoder == "scratch" and reloaded.pipeline.text_encoder.config.hidden_size == 32
    prompts = ["a red circle", "a blue circle"]
    assert torch.allclose(reloaded.encode_prompts(prompts), model.encode_prompts(prompts), atol=1e-5)  # (2, 24, 32)
