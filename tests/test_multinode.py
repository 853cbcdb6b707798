"""Training beyond one torchrun: two "hosts" rendezvousing through torchrun's c10d backend, and Ray
Train's TorchTrainer with two CPU workers. Both must give the model that one process trains on the
full batch (so both ranks' gradients were averaged), and the model must learn."""

import os
import shutil
import socket
import subprocess
import sys

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from safetensors.torch import load_file

import polymodal
from polymodal.data.formats import load_records
from polymodal.data.pairs import ImageTextPairs
from polymodal.data.synthetic.shapes import ShapesConfig, generate
from polymodal.losses import clip_loss
from polymodal.train.distributed import DistInfo, share_resume_state
from polymodal.train.loop import TrainConfig, train

pytestmark = pytest.mark.slow  # launches processes (make test-fast skips them)

# A LayerNorm model (BatchNorm's statistics differ per rank by design); 128 images = 4 steps of 32.
# One process: 16 steps reach image->caption top-5 0.13 on the 128 images, resumed to 24 steps 0.16 (chance 0.04).
COMMON = dict(model="shapes-vit-tiny", batch_size=32, eval_images=0, device="cpu", precision="fp32")


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """A tiny dataset, a one-process run of 16 steps, and that run resumed to 24 steps."""
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("multinode")
    generate(root / "data", ShapesConfig(n_train=128, n_val=0, n_test=0, n_unseen=0, seed=3), workers=1,
             progress=False)
    train(TrainConfig(data=str(root / "data"), out=str(root / "ref16"), steps=16, progress=False, **COMMON))
    shutil.copytree(root / "ref16", root / "ref24")
    train(TrainConfig(data=str(root / "data"), out=str(root / "ref24"), steps=24, resume=True, progress=False,
                      **COMMON))
    return root


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _assert_same_weights(a, b):
    wa, wb = load_file(a / "model.safetensors"), load_file(b / "model.safetensors")
    assert wa.keys() == wb.keys()
    for k in wa:
        assert torch.allclose(wa[k], wb[k], atol=2e-4), f"{k}: max diff {(wa[k] - wb[k]).abs().max():.2e}"


def _quality(model, data) -> tuple[float, float]:
    """(InfoNCE loss, image->caption top-5 accuracy) on the 128 training images with their first captions."""
    pairs = ImageTextPairs(load_records(data).split("train"), 64, progress=False)
    with torch.no_grad():
        out = model.eval()(pairs.images, model.tokenizer([r.text[0] for r in pairs.records]))
    sim = out["image_features"] @ out["text_features"].T  # (128, 128)
    top5 = (sim.topk(5, dim=1).indices == torch.arange(len(sim))[:, None]).any(1).float().mean().item()
    return sum(clip_loss(out).values()).item(), top5


def _untrained_loss(root) -> float:
    torch.manual_seed(0)
    model = polymodal.create_model("shapes-vit-tiny", texts=(t for r in load_records(root / "data") for t in r.text))
    return _quality(model, root / "data")[0]


def test_torchrun_two_nodes_rendezvous_and_resume(runs):
    """Two torchrun agents (one process each) meet at a c10d endpoint, as on two hosts. Each runs in its
    own directory with `--out run`, as hosts without a shared filesystem: only host 0 holds the 16-step
    checkpoint, yet `--resume` must continue both ranks from it, and only rank 0 writes."""
    hosts = [runs / "host0", runs / "host1"]
    for h in hosts:
        h.mkdir()
    shutil.copytree(runs / "ref16", hosts[0] / "run")
    endpoint = f"127.0.0.1:{_free_port()}"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--nproc-per-node", "1",
           "--rdzv-backend", "c10d", "--rdzv-endpoint", endpoint, "--rdzv-id", "polymodal-test",
           "-m", "polymodal.cli", "train", str(runs / "data"), "--out", "run", "--steps", "24", "--resume",
           "--model", "shapes-vit-tiny", "--batch-size", "32", "--eval-images", "0", "--device", "cpu",
           "--precision", "fp32"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    procs = [subprocess.Popen(cmd, cwd=h, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for h in hosts]
    try:
        logs = [p.communicate(timeout=300)[0] for p in procs]  # ranks out of step hang: fail instead
    finally:
        for p in procs:
            p.kill()
    assert [p.returncode for p in procs] == [0, 0], logs[0][-2000:] + logs[1][-2000:]
    assert not (hosts[1] / "run" / "model.safetensors").exists()  # rank 1 trained but wrote nothing
    _assert_same_weights(hosts[0] / "run", runs / "ref24")  # = one process, full batch, resumed
    loss, top5 = _quality(polymodal.load(hosts[0] / "run"), runs / "data")
    assert loss < _untrained_loss(runs) - 0.6 and top5 > 0.12  # chance: 5 / 128 = 0.04


def test_ray_torch_trainer_two_workers(runs):
    ray = pytest.importorskip("ray")
    from polymodal.train.ray_train import train_on_ray

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        cfg = TrainConfig(data=str(runs / "data"), out=str(runs / "ray"), steps=16, progress=False, **COMMON)
        run = train_on_ray(cfg, workers=2, storage=str(runs / "ray-storage"))
    finally:
        ray.shutdown()
    assert run.world_size == 2 and run.out == runs / "ray"
    _assert_same_weights(runs / "ray", runs / "ref16")  # half a batch per worker, gradients averaged
    assert (runs / "ray" / "training_state.pt").exists()  # --resume works on it as on any run
    assert (run.ray_checkpoint and os.path.exists(os.path.join(run.ray_checkpoint, "model.safetensors")))
    loss, top5 = _quality(polymodal.load(runs / "ray"), runs / "data")
    assert loss < _untrained_loss(runs) - 0.5 and top5 > 0.1  # chance: 0.04


def _resume_worker(rank, port, queue):
    """Rank 0 holds a checkpoint that rank 1 lacks (hosts without a shared --out), then the reverse."""
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=2)
    saved = {"step": 16, "epoch": 4, "elapsed": 3.5, "optimizer": {"state": {0: {"exp_avg": torch.arange(3.0)}}}}
    info = DistInfo(rank, 2, 0)
    got = share_resume_state(saved if rank == 0 else None, info)
    try:
        share_resume_state(None if rank == 0 else saved, info)
        error = ""
    except RuntimeError as err:
        error = str(err)
    queue.put((rank, got["step"], got["optimizer"]["state"][0]["exp_avg"].tolist(), error))
    dist.destroy_process_group()


def test_resume_state_comes_from_rank_zero():
    ctx = mp.get_context("spawn")
    queue, port = ctx.Queue(), _free_port()
    procs = [ctx.Process(target=_resume_worker, args=(r, port, queue)) for r in range(2)]
    for p in procs:
        p.start()
    results = sorted(queue.get(timeout=120) for _ in procs)
    for p in procs:
        p.join(30)
    assert [r[0] for r in results] == [0, 1]
    for _, step, moments, error in results:
        assert (step, moments) == (16, [0.0, 1.0, 2.0])  # rank 1 resumes where rank 0 stopped
        assert "rank 0 found no training state" in error  # every rank stops, none hangs or starts over
