"""Text <-> video retrieval (issue 13): frames through an aligned model's image tower, then
temporal attention; a short run finds clips far above chance, saves and reloads to the same scores."""

import pytest
from typer.testing import CliRunner

from polymodal.cli import app
from polymodal.data import load_records
from polymodal.data.synthetic.moving_shapes import MovingShapesConfig, generate
from polymodal.train.video_retrieval import evaluate_video_retrieval, load_video_text_model


@pytest.fixture(scope="module")
def clips(tmp_path_factory):
    out = tmp_path_factory.mktemp("clips")
    generate(out, MovingShapesConfig(n_train=256, n_val=0, n_test=64, n_unseen=0), workers=1, progress=False)
    return out


@pytest.mark.slow
def test_a_short_run_retrieves_clips_far_above_chance_and_reloads(clips, tmp_path):
    run = CliRunner().invoke(app, ["train-video-retrieval", str(clips), "--out", str(tmp_path / "m"), "--model",
                                   "shapes-cnn-tiny", "--steps", "150", "--batch-size", "32", "--lr", "2e-3"])
    assert run.exit_code == 0, run.output
    model = load_video_text_model(tmp_path / "m")
    scores = evaluate_video_retrieval(model, load_records(clips).split("test"))
    assert scores["text_to_video_r1"] >= 0.2, scores  # chance: about 1/64
    assert f"R@1 text->video {scores['text_to_video_r1']:.3f}" in " ".join(run.output.split())


def test_a_bad_temporal_model_or_checkpoint_is_one_clear_line(clips, tmp_path):
    from polymodal.errors import CheckpointError
    from polymodal.models import create_model
    from polymodal.models.video_tower import VideoTextModel

    with pytest.raises(ValueError, match="unknown temporal model"):
        VideoTextModel(create_model("shapes-cnn-tiny", texts=["a red circle"]), 8, temporal="lstm")
    with pytest.raises(CheckpointError, match="not a video-text model"):
        load_video_text_model(tmp_path)
