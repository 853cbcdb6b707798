"""Text-to-video diffusion (issue 13, part 2): the saved pipeline is diffusers' own TextToVideoSDPipeline
(its loader and __call__ give our clips), clips have the right shape, bad requests get one clear
line, the image UNet's spatial layers initialise the video UNet exactly, a tiny training run on
Moving-ShapesWorld writes a loadable pipeline, and a grid of clips is one animated GIF."""

import numpy as np
import pytest
import torch
import typer
from PIL import Image, ImageSequence
from typer.testing import CliRunner

pytest.importorskip("diffusers")
from polymodal.data.synthetic.moving_shapes import MovingShapesConfig, generate  # noqa: E402
from polymodal.errors import CheckpointError  # noqa: E402
from polymodal.models.generative.diffusion import (  # noqa: E402
    SCHEDULERS,
    assemble,
    build_unet,
    build_vae,
    make_scheduler,
)
from polymodal.models.generative.video_diffusion import (  # noqa: E402
    build_video_unet,
    create_text_to_video,
    get_video_diffusion_config,
    init_spatial_from_image_unet,
    is_text_to_video_pipeline,
    load_text_to_video,
    write_video_grid,
)
from polymodal.train.video_generator import VideoTrainConfig, train_video_generator  # noqa: E402
from polymodal.video_cli import generate_video, train_video_generator_cmd  # noqa: E402

PROMPT = "a red circle moves to the left"
TINY = "moving-shapes-video-tiny"


@pytest.fixture(scope="module")
def video_pipeline(tmp_path_factory):
    """A tiny untrained text-to-video model and the pipeline directory it saved."""
    torch.manual_seed(0)
    model = create_text_to_video(TINY)
    out = model.save(tmp_path_factory.mktemp("t2v") / "pipeline", extra={"note": "untrained"})
    return model, out


@pytest.fixture(scope="module")
def image_pipeline(tmp_path_factory):
    """A tiny text-to-image pipeline whose parts line up with the tiny video preset's."""
    torch.manual_seed(1)
    config = get_video_diffusion_config(TINY).image_config()  # lines up with the tiny video preset
    unet = build_unet(config)
    for p in unet.parameters():  # not its initialisation: zeros there would make copies look equal
        p.data.normal_(0, 0.05)
    return assemble(config, unet, build_vae(config)).save(tmp_path_factory.mktemp("t2i") / "pipeline")


@pytest.fixture(scope="module")
def clips_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("moving")
    return generate(out, MovingShapesConfig(n_train=16, n_val=0, n_test=0, n_unseen=0, seed=2), workers=1,
                    progress=False)


def pixels(clips) -> np.ndarray:
    return np.stack([np.stack([np.asarray(f) for f in clip]) for clip in clips]).astype(int)  # (N, T, H, W, 3)


def test_the_pipeline_round_trips_through_diffusers_own_loader(video_pipeline):
    from diffusers import DDPMScheduler, DiffusionPipeline, TextToVideoSDPipeline

    fresh, directory = video_pipeline
    ours = load_text_to_video(directory)
    assert ours.meta["note"] == "untrained" and ours.meta["kind"] == "text-to-video"
    assert ours.image_size == 32 and ours.frames == 8
    theirs = DiffusionPipeline.from_pretrained(directory)
    assert isinstance(theirs, TextToVideoSDPipeline) and isinstance(theirs.scheduler, DDPMScheduler)
    for name in ("ddim", "dpm++"):
        theirs.scheduler = make_scheduler(name, theirs.scheduler.config)
        expected = theirs([PROMPT] * 2, num_frames=8, num_inference_steps=3, guidance_scale=3.0, height=32, width=32,
                          generator=torch.Generator().manual_seed(5), output_type="pil").frames
        got = ours.generate(PROMPT, n=2, steps=3, guidance=3.0, seed=5, scheduler=name)
        assert np.abs(pixels(expected) - pixels(got)).max() <= 1, name
        # The model in memory samples as the saved one does (the same sampler settings).
        assert (pixels(fresh.generate(PROMPT, n=2, steps=3, seed=5, scheduler=name)) == pixels(got)).all(), name
    assert isinstance(ours.pipeline.scheduler, DDPMScheduler)  # sampling did not change it


def test_generate_gives_n_clips_of_t_frames_and_a_seed_repeats(video_pipeline):
    model = load_text_to_video(video_pipeline[1])
    for name in SCHEDULERS:
        clips = model.generate([PROMPT, "a blue star grows"], n=2, steps=2, seed=1, scheduler=name)
        assert len(clips) == 4 and all(len(c) == 8 for c in clips), name
        assert all(f.size == (32, 32) and f.mode == "RGB" for c in clips for f in c), name
    assert (pixels(model.generate([PROMPT, "a blue star grows"], n=2, steps=2, seed=1, scheduler="euler"))
            == pixels(clips)).all()
    assert (pixels(model.generate(PROMPT, steps=2, seed=2)) != pixels(model.generate(PROMPT, steps=2))).any()
    assert len(model.generate(PROMPT, steps=2, frames=4)[0]) == 4
    assert len(model.generate(PROMPT, steps=2, guidance=1.0)[0]) == 8  # no classifier-free guidance


@pytest.mark.parametrize(("kwargs", "reason"), [
    ({"prompts": "  "}, "empty prompt"), ({"prompts": []}, "empty prompt"), ({"steps": 0}, "steps must be"),
    ({"scheduler": "plms"}, "unknown scheduler"), ({"n": 0}, "n must be"), ({"n": 65}, "at most 64 clips"),
    ({"frames": 0}, "frames must be"), ({"guidance": -1.0}, "guidance must be"),
])
def test_a_bad_request_is_one_clear_line(video_pipeline, kwargs, reason):
    with pytest.raises(ValueError, match=reason) as err:
        video_pipeline[0].generate(**{"prompts": PROMPT, "steps": 2, **kwargs})
    assert "\n" not in str(err.value)


def test_spatial_layers_are_copied_from_the_image_unet(image_pipeline):
    from diffusers import UNet2DConditionModel

    image_unet = UNet2DConditionModel.from_pretrained(image_pipeline, subfolder="unet").eval()
    video_unet = build_video_unet(get_video_diffusion_config(TINY)).eval()
    copied = init_spatial_from_image_unet(video_unet, image_unet)
    source, target = image_unet.state_dict(), video_unet.state_dict()
    same = [k for k in source if k in target and source[k].shape == target[k].shape]
    assert copied >= len(same) > 0 and copied == len(source) - 2  # all but text_proj (folded in instead)
    folded = [k for k in same if k.endswith("attn2.to_out.0.bias")]  # text_proj's bias folded in
    assert folded and all(torch.equal(source[k], target[k]) for k in same if k not in folded)
    # With the temporal layers starting as identity, the video UNet is the image UNet on each frame.
    x, states, t = torch.randn(2, 4, 3, 8, 8), torch.randn(2, 24, 384), torch.tensor([10, 700])
    with torch.no_grad():
        video = video_unet(x, t, encoder_hidden_states=states).sample  # (B, C, T, s, s)
        frames = torch.stack([image_unet(x[:, :, f], t, encoder_hidden_states=states).sample for f in range(3)], 2)
    assert torch.allclose(video, frames, atol=1e-5)
    # A UNet of other widths does not line up: refused, nothing copied.
    other = build_video_unet(get_video_diffusion_config("moving-shapes-video-small"))
    before = {k: v.clone() for k, v in other.state_dict().items()}
    with pytest.raises(ValueError, match="do not line up") as err:
        init_spatial_from_image_unet(other, image_unet)
    assert "\n" not in str(err.value) and all(torch.equal(before[k], v) for k, v in other.state_dict().items())


def test_a_tiny_training_run_writes_a_loadable_pipeline(clips_dir, tmp_path):
    out = tmp_path / "run"
    result = train_video_generator(VideoTrainConfig(
        data=str(clips_dir), out=str(out), model=TINY, steps=3, batch_size=4, vae_steps=3, progress=False,
        device="cpu"))
    assert result["steps"] == 3 and result["clips"] == 16 and result["frames"] == 8
    assert result["train_clips_per_s"] > 0 and np.isfinite(result["loss"]) and np.isfinite(result["vae_loss"])
    assert is_text_to_video_pipeline(out)
    model = load_text_to_video(out)
    assert model.meta["training"]["steps"] == 3 and model.config.frames == 8
    assert model.pipeline.vae.config.scaling_factor != 0.18215  # set from the data's latents
    clip = model.generate(PROMPT, steps=2)[0]
    assert len(clip) == 8 and clip[0].size == (32, 32)


def test_clips_load_resized_and_a_bad_one_is_skipped(clips_dir):
    from polymodal.data import load_records
    from polymodal.train.video_generator import load_clips

    data = load_records(clips_dir).split("train")
    data.records[3].attributes["clip"] = "clips/train/missing.png"
    data.records[5].attributes.pop("clip")
    records, clips = load_clips(data, image_size=16, progress=False)
    assert clips.shape == (14, 8, 3, 16, 16) and clips.dtype == torch.uint8 and len(records) == 14
    assert len(data.skips) == 2 and "missing.png" in data.skips.summary()


def test_spatial_layers_that_do_not_line_up_fail_before_training(clips_dir, image_pipeline, tmp_path):
    with pytest.raises(ValueError, match="do not line up"):
        train_video_generator(VideoTrainConfig(data=str(clips_dir), out=str(tmp_path / "x"),
                                               model="moving-shapes-video-small", spatial_from=str(image_pipeline),
                                               batch_size=4, progress=False, device="cpu"))
    assert not (tmp_path / "x").exists()


def test_the_cli_reuses_an_image_models_parts(clips_dir, image_pipeline, tmp_path):
    app = typer.Typer()
    app.command()(train_video_generator_cmd)
    out = tmp_path / "shared"
    run = CliRunner().invoke(app, [str(clips_dir), "--out", str(out), "--model", TINY,
                                   "--steps", "2", "--batch-size", "4", "--vae", str(image_pipeline),
                                   "--spatial-from", str(image_pipeline), "--device", "cpu"])
    assert run.exit_code == 0, run.output + repr(run.exception)
    meta = load_text_to_video(out).meta
    assert meta["vae_from"] and meta["spatial_tensors_copied"] > 0 and "vae_steps" not in meta


def test_an_image_pipeline_is_not_a_video_one(image_pipeline, video_pipeline, tmp_path):
    assert not is_text_to_video_pipeline(image_pipeline) and is_text_to_video_pipeline(video_pipeline[1])
    with pytest.raises(CheckpointError, match="not a text-to-video pipeline"):
        load_text_to_video(image_pipeline)
    with pytest.raises(CheckpointError, match="no model_index.json"):
        load_text_to_video(tmp_path)


def test_a_grid_of_clips_is_one_gif_of_t_frames(tmp_path):
    rng = np.random.default_rng(0)
    moving = [[Image.fromarray(rng.integers(0, 255, (32, 32, 3), np.uint8)) for _ in range(6)] for _ in range(3)]
    still = [[Image.new("RGB", (32, 32), (200, 30, 30))] * 6]  # identical frames are kept as frames
    path = write_video_grid(moving + still, columns=2, path=tmp_path / "grid" / "clips.gif")
    gif = Image.open(path)
    assert gif.size == (64, 64) and gif.n_frames == 6
    first = np.asarray(next(ImageSequence.Iterator(gif)).convert("RGB")).astype(int)
    assert np.abs(first[32:, 32:] - [200, 30, 30]).max() <= 8  # the 4th clip, bottom right
    assert [p.name for p in path.parent.iterdir()] == ["clips.gif"]  # no temporary file left
    with pytest.raises(ValueError, match="animated GIF"):
        write_video_grid(moving, columns=2, path=tmp_path / "clips.png")
    with pytest.raises(ValueError, match="same number of frames"):
        write_video_grid([moving[0], moving[1][:3]], columns=2, path=tmp_path / "bad.gif")


def test_generate_video_writes_one_gif(video_pipeline, tmp_path):
    path = generate_video(video_pipeline[1], [PROMPT, "a blue star grows"], n=3, steps=2, out=tmp_path / "v.gif")
    gif = Image.open(path)
    assert gif.size == (3 * 32, 2 * 32) and gif.n_frames == 8
    with pytest.raises(ValueError, match="animated GIF"):
        generate_video(video_pipeline[1], [PROMPT], out=tmp_path / "v.png")
