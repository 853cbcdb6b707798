"""The parts of training, each alone: the progress clock, the step loop both trainers share, and
the contrastive trainer's schedule and validation split. Fast: nothing here trains a model."""

import pytest
import torch

from polymodal.data import load_records
from polymodal.train.loop import TrainConfig


def test_progress_runs_on_steps_or_the_clock_whichever_is_further():
    from polymodal.train.engine import TrainingProgress

    p = TrainingProgress(total_steps=10)
    p.start()
    for _ in range(4):
        p.tick()
    assert p.fraction() == 0.4 and not p.done
    p.time_budget, p.elapsed = 100.0, 80.0
    assert p.fraction() == 0.8
    p.elapsed = 150.0
    assert p.fraction() == 1.0 and p.done


def test_paused_time_is_not_training_time():
    import time

    from polymodal.train.engine import TrainingProgress

    p = TrainingProgress(total_steps=10, time_budget=1000.0)
    p.start()
    with p.paused():
        time.sleep(0.2)
    p.tick()
    assert p.elapsed < 0.1 and p.step == 1


class _Recorder:
    """A stand-in trainer that records what the loop does."""

    def __init__(self, n_batches):
        self.n_batches, self.events = n_batches, []

    def batches(self, epoch):
        return iter(range(self.n_batches))

    def step(self, batch):
        self.events.append(("step", batch))
        return {"loss": 1.0}

    def after_step(self, losses):
        return "desc"

    def after_epoch(self, epochs_done):
        self.events.append(("epoch", epochs_done))


def _loop(total_steps):
    from polymodal.train.engine import StepLoop, TrainingProgress

    model = torch.nn.Linear(2, 2)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.0)
    progress = TrainingProgress(total_steps)
    return StepLoop(model, optimizer, progress, lr=1.0, warmup=0.5, show=False), optimizer, progress


def test_step_loop_stops_mid_epoch_at_the_last_step_and_ends_each_epoch():
    loop, optimizer, progress = _loop(total_steps=5)
    rec = _Recorder(n_batches=3)
    lrs = []
    rec.step = lambda batch, step=rec.step: (lrs.append(optimizer.param_groups[0]["lr"]), step(batch))[1]
    epochs = loop.run(rec.batches, rec.step, rec.after_step, rec.after_epoch)
    assert epochs == 2 and progress.step == 5
    assert rec.events == [("step", 0), ("step", 1), ("step", 2), ("epoch", 1), ("step", 0), ("step", 1), ("epoch", 2)]
    assert lrs[:3] == [0.0, 0.4, 0.8]  # linear warm-up over the first half, set before each step


def test_step_loop_resumes_where_it_stopped_and_refuses_an_empty_epoch():
    loop, _, progress = _loop(total_steps=6)
    progress.step = 3  # a resumed run: three steps done, one epoch of three
    rec = _Recorder(n_batches=3)
    assert loop.run(rec.batches, rec.step, rec.after_step, rec.after_epoch, first_epoch=1, max_epochs=5) == 2
    assert progress.step == 6 and rec.events[-1] == ("epoch", 2)
    loop, _, _ = _loop(total_steps=6)
    with pytest.raises(ValueError, match="no batch"):
        loop.run(_Recorder(0).batches, rec.step, rec.after_step)


def test_schedule_and_validation_split_from_the_config(shapes_dir):
    from polymodal.data.pairs import ImageTextPairs
    from polymodal.train.distributed import DistInfo
    from polymodal.train.loop import _schedule, _validation_split

    data = load_records(shapes_dir)
    cfg = TrainConfig(data=str(shapes_dir), out="unused", batch_size=100, epochs=3, eval_images=50)
    pairs = ImageTextPairs(data.split("train"), 32, progress=False)
    progress, first, last = _schedule(cfg, pairs, None, DistInfo())
    assert (progress.total_steps, progress.step, first, last) == (18, 0, 0, 3)  # 600 images: 6 steps an epoch
    progress, first, last = _schedule(cfg, pairs, {"step": 7, "epoch": 1, "elapsed": 9.0}, DistInfo())
    assert (progress.step, progress.elapsed, first) == (7, 9.0, 1)
    steps_cfg = TrainConfig(**{**cfg.__dict__, "steps": 10})
    assert _schedule(steps_cfg, pairs, None, DistInfo())[2] == 2  # 10 steps need two epochs
    assert len(_validation_split(cfg, data)) == 50
    assert _validation_split(TrainConfig(**{**cfg.__dict__, "eval_split": "nope"}), data) is None
