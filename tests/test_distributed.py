"""DDP on 2 CPU processes (gloo) computes the loss and gradients of one process on the same global batch."""

import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

import polymodal
from polymodal.losses import clip_loss, siglip_loss

pytestmark = pytest.mark.slow  # every test here trains or launches processes (make test-fast skips them)

CAPTIONS = ["a small red circle left of a big blue square", "a big green star", "a little white cross above a disc",
            "a large yellow triangle", "a small cyan diamond below a big purple plus", "a big orange star",
            "a small white square right of a large red cross", "a little green disc"]


def _model(loss_name="clip"):
    torch.manual_seed(0)
    # A LayerNorm model: BatchNorm's batch statistics would differ per rank by design.
    bias = {"init_logit_bias": -10.0} if loss_name == "siglip" else {}
    return polymodal.create_model("shapes-vit-tiny", texts=CAPTIONS * 4, **bias)


def _batch():
    g = torch.Generator().manual_seed(1)
    return torch.randint(0, 255, (8, 3, 64, 64), dtype=torch.uint8, generator=g), CAPTIONS


def _single(loss_name):
    loss_fn = {"clip": clip_loss, "siglip": siglip_loss}[loss_name]
    model = _model(loss_name)
    images, captions = _batch()
    out = model(images, model.tokenizer(captions))
    loss = sum(loss_fn(out).values())
    loss.backward()
    return loss.item(), model.image_proj.weight.grad.clone()


def _worker(rank, world, port, loss_name, queue):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    torch.set_num_threads(1)
    model = _model(loss_name)
    net = torch.nn.parallel.DistributedDataParallel(model)
    images, captions = _batch()
    mine = slice(rank * 4, rank * 4 + 4)  # the loop's split: each rank takes its slice of the global batch
    out = net(images[mine], model.tokenizer(captions[mine]))
    loss = sum({"clip": clip_loss, "siglip": siglip_loss}[loss_name](out).values())
    loss.backward()
    queue.put((rank, loss.item(), model.image_proj.weight.grad.numpy().copy()))  # by value, not shared memory
    dist.destroy_process_group()


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("loss_name", ["clip", "siglip"])
def test_ddp_matches_single_process(loss_name):
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    port = _free_port()
    procs = [ctx.Process(target=_worker, args=(r, 2, port, loss_name, queue)) for r in range(2)]
    for p in procs:
        p.start()
    results = sorted(queue.get(timeout=120) for _ in procs)
    for p in procs:
        p.join(60)
    single_loss, single_grad = _single(loss_name)
    for _, loss, grad in results:
        assert abs(loss - single_loss) < 1e-5  # every rank computes the global-batch loss
        # DDP's averaged gradient is the global one
        assert torch.allclose(torch.from_numpy(grad), single_grad, atol=1e-5)


def test_train_command_under_torchrun(shapes_dir, tmp_path):
    import subprocess
    import sys

    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-port", str(_free_port()),
           "-m", "polymodal.cli", "train", str(shapes_dir), "--out", str(tmp_path / "ddp"),
           "--model", "shapes-cnn-tiny",
           "--epochs", "1", "--batch-size", "64", "--eval-images", "50"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-2000:]
    model = polymodal.load(tmp_path / "ddp")
    assert model.encode_text(["a red circle"]).shape == (1, 64)
    import json

    assert json.loads((tmp_path / "ddp" / "config.json").read_text())["step"] == 600 // 64
