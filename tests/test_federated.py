"""Federated training: FedAvg's aggregate, FedProx's pull, and small simulations that learn."""

import numpy as np
import pytest
import torch

from polymodal.data import load_records
from polymodal.data.pairs import ImageTextPairs
from polymodal.models.factory import create_model
from polymodal.paradigms.federated import (
    AlignedClient,
    ClientData,
    FedAdam,
    FedAvg,
    FedAvgM,
    FedProx,
    FitResult,
    get_parameters,
    run_simulation,
    set_parameters,
)
from polymodal.paradigms.federated_shapes import Evaluator, FederatedConfig, partition, run_federated

torch.set_num_threads(1)


def test_fedavg_is_the_example_weighted_mean():
    rng = np.random.default_rng(0)
    names = ["image_proj.weight", "text_proj.weight", "image_tower.bn.num_batches_tracked"]
    results = [FitResult([rng.normal(size=(3, 2)).astype(np.float32), rng.normal(size=4).astype(np.float32),
                          np.array(n, dtype=np.int64)], n, {"towers": "image,text,pairs"}) for n in (10, 30)]
    current = [np.zeros((3, 2), np.float32), np.zeros(4, np.float32), np.array(0)]
    out = FedAvg(names).aggregate_fit(0, results, current)
    for i in range(2):
        a, b = (r.parameters[i].astype(np.float64) for r in results)
        np.testing.assert_allclose(out[i], (10 * a + 30 * b) / 40, rtol=1e-6, atol=1e-7)
        assert out[i].dtype == np.float32
    assert out[2] == 25 and out[2].dtype == np.int64  # integer buffers stay integers


def test_fedavg_averages_a_tower_only_over_the_clients_that_trained_it():
    names = ["image_proj.weight", "text_proj.weight", "logit_scale"]
    image_only = FitResult([np.ones(2), np.full(2, 9.0), np.array(9.0)], 100, {"towers": "image"})
    pairs = FitResult([np.full(2, 3.0), np.full(2, 3.0), np.array(3.0)], 100, {"towers": "image,text,pairs"})
    out = FedAvg(names).aggregate_fit(0, [image_only, pairs], [np.zeros(2), np.zeros(2), np.array(0.0)])
    np.testing.assert_allclose(out[0], 2.0)  # both trained the image tower
    np.testing.assert_allclose(out[1], 3.0)  # the image-only client's stale text tower is left out
    assert float(out[2]) == 3.0


def _rounds_of(strategy, names, rounds=3, seed=0):
    """Aggregate a few rounds of random client models; the global parameters after each."""
    rng, current, out = np.random.default_rng(seed), [np.zeros(4, np.float32), np.zeros(2, np.float32)], []
    for r in range(rounds):
        results = [FitResult([c + rng.normal(size=c.shape).astype(np.float32) for c in current], n,
                             {"towers": "image,text,pairs"}) for n in (10, 30)]
        current = strategy.aggregate_fit(r, results, current)
        out.append(current)
    return out


def test_fedavgm_with_no_momentum_is_fedavg():
    names = ["image_proj.weight", "image_tower.bn.running_mean"]
    for a, b in zip(_rounds_of(FedAvg(names), names), _rounds_of(FedAvgM(names, beta=0.0, server_lr=1.0), names)):
        for x, y in zip(a, b):
            np.testing.assert_allclose(x, y, rtol=1e-6, atol=1e-6)


def test_fedavgm_accumulates_a_constant_update():
    # Every round the clients move +1: the server's step grows 1, 1.9, 2.71 (v = 0.9 v + 1).
    strategy, current = FedAvgM(["w", "bn.running_mean"], beta=0.9), [np.zeros(1), np.zeros(1)]
    for step in (1.0, 1.9, 2.71):
        new = strategy.aggregate_fit(0, [FitResult([c + 1 for c in current], 1, {})], current)
        np.testing.assert_allclose(new[0] - current[0], step)
        np.testing.assert_allclose(new[1] - current[1], 1.0)  # BatchNorm statistics are plainly averaged
        current = new


def test_fedadam_moves_each_weight_about_the_server_lr():
    strategy, current = FedAdam(["w"], server_lr=0.01, tau=1e-9), [np.zeros(3)]
    # Adam normalises the scale away: a tiny and a large update move a weight by the same amount.
    new = strategy.aggregate_fit(0, [FitResult([np.array([1e-4, 1.0, -50.0])], 1, {})], current)
    np.testing.assert_allclose(new[0], 0.01 * (1 - 0.9) / np.sqrt(1 - 0.99) * np.array([1, 1, -1]), rtol=1e-4)


def test_a_client_keeps_its_optimizer_across_rounds_only_when_asked(shapes_pairs):
    model = create_model("shapes-cnn-tiny", texts=[t for r in shapes_pairs.records for t in r.text])
    data = ClientData(shapes_pairs.images[:32], [r.text for r in shapes_pairs.records[:32]])
    start = get_parameters(model)
    seen = {}
    for keep in (False, True):
        client = AlignedClient("0", model, data, 16)
        config = {"round": 0, "rounds": 2, "local_steps": 1, "lr": 1e-3, "keep_optimizer": keep}
        client.fit(start, config)
        first = client.optimizer
        client.fit(start, {**config, "round": 1})
        seen[keep] = client.optimizer is first
        assert all(s["step"] == (2 if keep else 1) for s in client.optimizer.state.values())
    assert seen == {False: False, True: True}
    assert FedAvg(["w"], keep_optimizer=True).configure_fit(0, 1)["keep_optimizer"]


def test_only_fedprox_asks_for_a_proximal_term():
    assert FedAvg(["w"]).configure_fit(0, 1)["mu"] == 0.0
    assert FedProx(["w"], mu=0.5).configure_fit(0, 1)["mu"] == 0.5


@pytest.fixture(scope="module")
def shapes_pairs(shapes_dir):
    train = load_records(shapes_dir).split("train")
    train.records = train.records[:256]
    return ImageTextPairs(train, 64, progress=False)


def test_fedprox_pulls_towards_the_global_model(shapes_pairs):
    model = create_model("shapes-cnn-tiny", texts=[t for r in shapes_pairs.records for t in r.text])
    start = get_parameters(model)
    data = ClientData(shapes_pairs.images, [r.text for r in shapes_pairs.records])
    config = {"round": 0, "rounds": 1, "local_steps": 8, "lr": 5e-3, "warmup": 0.0}
    drift = {}
    for mu in (0.0, 5.0):
        torch.manual_seed(0)
        client = AlignedClient("0", model, data, batch_size=32, seed=0)
        params, n, metrics = client.fit(start, {**config, "mu": mu})
        assert n == len(data) and metrics["towers"] == "image,text,pairs"
        drift[mu] = sum(float(((p - s) ** 2).sum()) for p, s, (name, _) in
                        zip(params, start, model.state_dict().items()) if "running" not in name and p.dtype.kind == "f")
    assert 0 < drift[5.0] < 0.7 * drift[0.0]


def test_two_clients_two_rounds_learn(shapes_dir):
    cfg = FederatedConfig(str(shapes_dir), strategy="fedavg", clients=2, rounds=2, local_steps=20, batch_size=32,
                          lr=5e-3, partition="label-skew", train_limit=400, test_limit=100, progress=False)
    res = run_federated(cfg, centralised=False)
    rounds = res["federated"]["rounds"]
    assert [r["round"] for r in rounds] == [1, 2] and len(res["clients"]) == 2
    assert rounds[-1]["loss"] < rounds[0]["loss"]
    # Chance is 1/8 for colour; an untrained model finds the right image about 1 time in 100.
    assert rounds[-1]["zeroshot_colour"] > 0.35 and rounds[-1]["t2i_R@1"] > 0.04


def test_one_modality_clients_train_only_their_tower(shapes_pairs):
    model = create_model("shapes-cnn-tiny", texts=[t for r in shapes_pairs.records for t in r.text])
    captions = [r.text for r in shapes_pairs.records]
    clients = [AlignedClient("0", model, ClientData(shapes_pairs.images, None), 16),
               AlignedClient("1", model, ClientData(None, captions), 16)]
    start = get_parameters(model)
    names = list(model.state_dict())
    end, history = run_simulation(lambda cid: clients[int(cid)], 2, start, FedAvg(names, local_steps=2), 1,
                                  progress=False)
    changed = {n for n, a, b in zip(names, start, end) if not np.array_equal(a, b)}
    assert any(n.startswith("image_tower") for n in changed) and any(n.startswith("text_tower") for n in changed)
    assert "logit_scale" not in changed  # no client held pairs
    set_parameters(model, end)
    assert len(history.rounds) == 1


def test_label_skew_partition_gives_each_client_few_classes():
    labels = np.repeat(np.arange(6), 50)
    parts = partition(labels, 8, "label-skew", 0)
    assert sorted(np.concatenate(parts).tolist()) == list(range(300))
    assert max(len(set(labels[p])) for p in parts) <= 3
    assert max(len(set(labels[p])) for p in partition(labels, 8, "iid", 0)) == 6


def test_evaluator_scores_an_untrained_model_near_chance(shapes_dir):
    test = load_records(shapes_dir).split("test")
    test.records = test.records[:100]
    pairs = ImageTextPairs(test, 64, progress=False)
    model = create_model("shapes-cnn-tiny", texts=[t for r in pairs.records for t in r.text])
    scores = Evaluator(model, pairs)(0, get_parameters(model))
    assert scores["t2i_R@1"] < 0.08 and 0 <= scores["zeroshot_shape"] <= 1


def test_cli_runs_a_mixed_federation_against_centralised(shapes_dir, tmp_path):
    import json

    from typer.testing import CliRunner

    from polymodal.cli import app

    out = tmp_path / "fed.json"
    res = CliRunner().invoke(app, ["federated", str(shapes_dir), "--clients", "3", "--rounds", "1", "--local-steps",
                                   "2", "--batch-size", "16", "--train-limit", "120", "--test-limit", "40",
                                   "--modalities", "pairs,image,text", "--strategy", "fedprox", "--json", str(out)])
    assert res.exit_code == 0, res.output
    got = json.loads(out.read_text())
    assert [c["mode"] for c in got["clients"]] == ["pairs", "image", "text"]
    assert {"federated", "centralised", "ratio_t2i_R@1"} <= set(got)
