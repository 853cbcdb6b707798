"""Federated training on Flower: per-tower aggregation in the strategies, FedProx's pull, the
client's kept optimizer in Flower's Context.state, and small Flower simulations that learn."""

from types import SimpleNamespace

import numpy as np
import pytest
import torch
from flwr.app import Array, ArrayRecord, MetricRecord, RecordDict
from flwr.serverapp import strategy as flower

from polymodal.data import load_records
from polymodal.data.pairs import ImageTextPairs
from polymodal.models.factory import create_model
from polymodal.paradigms.federated import (
    MODES,
    AlignedClient,
    ClientData,
    client_app,
    get_parameters,
    optimizer_record,
    restore_optimizer,
)
from polymodal.paradigms.federated_server import FedAdam, FedAvg, FedAvgM, FedProx, make_strategy, run_simulation
from polymodal.paradigms.federated_shapes import Evaluator, FederatedConfig, partition, run_federated

torch.set_num_threads(1)


def _reply(arrays: dict, n: int, towers=MODES) -> RecordDict:
    """The content of a client's train reply, as Flower delivers it to the strategy."""
    metrics = MetricRecord({"loss": 1.0, "num-examples": n, **{f"trained-{t}": float(t in towers) for t in MODES}})
    record = ArrayRecord({k: Array(np.asarray(v)) for k, v in arrays.items()})
    return RecordDict({"arrays": record, "metrics": metrics})


def _aggregate(strategy, current: dict, replies: list[RecordDict]) -> dict:
    strategy.current = ArrayRecord({k: Array(np.asarray(v)) for k, v in current.items()})  # as configure_train does
    arrays, metrics = strategy.aggregate_records(replies)
    assert metrics["loss"] == 1.0
    return {k: a.numpy() for k, a in arrays.items()}


def test_fedavg_is_the_example_weighted_mean():
    rng = np.random.default_rng(0)
    names = ["image_proj.weight", "text_proj.weight", "image_tower.bn.num_batches_tracked"]
    results = [{names[0]: rng.normal(size=(3, 2)).astype(np.float32), names[1]: rng.normal(size=4).astype(np.float32),
                names[2]: np.array(n, dtype=np.int64)} for n in (10, 30)]
    current = {names[0]: np.zeros((3, 2), np.float32), names[1]: np.zeros(4, np.float32), names[2]: np.array(0)}
    out = _aggregate(make_strategy("fedavg", 2), current, [_reply(r, n) for r, n in zip(results, (10, 30))])
    for name in names[:2]:
        a, b = (r[name].astype(np.float64) for r in results)
        np.testing.assert_allclose(out[name], (10 * a + 30 * b) / 40, rtol=1e-6, atol=1e-7)
        assert out[name].dtype == np.float32
    assert out[names[2]] == 25 and out[names[2]].dtype == np.int64  # integer buffers stay integers


def test_fedavg_averages_a_tower_only_over_the_clients_that_trained_it():
    names = ["image_proj.weight", "text_proj.weight", "logit_scale"]
    image_only = _reply(dict(zip(names, [np.ones(2), np.full(2, 9.0), np.array(9.0)])), 100, towers=("image",))
    pairs = _reply(dict(zip(names, [np.full(2, 3.0), np.full(2, 3.0), np.array(3.0)])), 100)
    out = _aggregate(make_strategy("fedavg", 2), dict(zip(names, [np.zeros(2), np.zeros(2), np.array(0.0)])),
                     [image_only, pairs])
    np.testing.assert_allclose(out[names[0]], 2.0)  # both trained the image tower
    np.testing.assert_allclose(out[names[1]], 3.0)  # the image-only client's stale text tower is left out
    assert float(out[names[2]]) == 3.0


def test_an_entry_no_client_trained_stays_and_a_failed_client_stops_the_run():
    out = _aggregate(make_strategy("fedavg", 1), {"logit_scale": np.array(2.0)},
                     [_reply({"logit_scale": np.array(7.0)}, 5, towers=("text",))])
    assert float(out["logit_scale"]) == 2.0
    failed = SimpleNamespace(has_error=lambda: True, error=SimpleNamespace(reason="out of memory"),
                             metadata=SimpleNamespace(src_node_id=3))  # what Flower hands on for a client that raised
    with pytest.raises(RuntimeError, match="round 2: a client failed: out of memory"):
        make_strategy("fedavg", 1).aggregate_train(2, [failed])


def _rounds_of(strategy, rounds=3, seed=0):
    """Aggregate a few rounds of random client models; the global parameters after each."""
    names = ["image_proj.weight", "image_tower.bn.running_mean"]
    rng, out = np.random.default_rng(seed), []
    current = {n: np.zeros(s, np.float32) for n, s in zip(names, (4, 2))}
    for _ in range(rounds):
        replies = [_reply({k: c + rng.normal(size=c.shape).astype(np.float32) for k, c in current.items()}, n)
                   for n in (10, 30)]
        current = _aggregate(strategy, current, replies)
        out.append(current)
    return out


def test_fedavgm_with_no_momentum_is_fedavg():
    plain, momentum = make_strategy("fedavg", 2), make_strategy("fedavgm", 2, server_momentum=0.0)
    for a, b in zip(_rounds_of(plain), _rounds_of(momentum)):
        for k in a:
            np.testing.assert_allclose(a[k], b[k], rtol=1e-6, atol=1e-6)


def test_fedavgm_accumulates_a_constant_update():
    # Every round the clients move +1: the server's step grows 1, 1.9, 2.71 (v = 0.9 v + 1).
    strategy = make_strategy("fedavgm", 1, server_momentum=0.9)
    current = {"w": np.zeros(1), "bn.running_mean": np.zeros(1)}
    assert isinstance(strategy, FedAvgM)
    for step in (1.0, 1.9, 2.71):
        new = _aggregate(strategy, current, [_reply({k: c + 1 for k, c in current.items()}, 1)])
        np.testing.assert_allclose(new["w"] - current["w"], step)
        np.testing.assert_allclose(new["bn.running_mean"] - current["bn.running_mean"], 1.0)  # plainly averaged
        current = new


def test_fedadam_moves_each_weight_about_the_server_lr():
    strategy = make_strategy("fedadam", 1, eta=0.01, tau=1e-9)
    assert isinstance(strategy, FedAdam)
    # Adam normalises the scale away: a tiny and a large update move a weight by the same amount.
    new = _aggregate(strategy, {"w": np.zeros(3)}, [_reply({"w": np.array([1e-4, 1.0, -50.0])}, 1)])
    np.testing.assert_allclose(new["w"], 0.01 * (1 - 0.9) / np.sqrt(1 - 0.99) * np.array([1, 1, -1]), rtol=1e-4)


def test_the_strategies_are_flowers():
    for name, ours, theirs in (("fedavg", FedAvg, flower.FedAvg), ("fedprox", FedProx, flower.FedProx),
                               ("fedavgm", FedAvgM, flower.FedAvgM), ("fedadam", FedAdam, flower.FedAdam)):
        assert isinstance(make_strategy(name, 2), ours) and issubclass(ours, theirs)
    assert make_strategy("fedprox", 2, proximal_mu=0.5).proximal_mu == 0.5  # sent to clients as "proximal-mu"
    with pytest.raises(ValueError, match="unknown strategy 'fedsgd'"):
        make_strategy("fedsgd", 2)


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
    # Between Flower messages the moments live in the node's Context.state as an ArrayRecord.
    restored = restore_optimizer(AlignedClient("0", model, data, 16), config, optimizer_record(client.optimizer))
    for a, b in zip(client.optimizer.state.values(), restored.state.values()):
        assert float(b["step"]) == 2 and torch.equal(a["exp_avg"], b["exp_avg"])


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
        params, n, metrics = client.fit(start, {**config, "proximal-mu": mu})
        assert n == len(data) and all(metrics[f"trained-{t}"] == 1.0 for t in MODES)
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


def test_a_two_client_flower_simulation_runs_two_rounds(shapes_pairs):
    # An image-only and a text-only client: each trains only its tower, and no one the temperature.
    model = create_model("shapes-cnn-tiny", texts=[t for r in shapes_pairs.records for t in r.text])
    captions = [r.text for r in shapes_pairs.records[:64]]
    clients = [AlignedClient("0", model, ClientData(shapes_pairs.images[:64], None), 16),
               AlignedClient("1", model, ClientData(None, captions), 16)]
    start = ArrayRecord(model.state_dict())
    scored = []
    config = {"rounds": 2, "local_steps": 2, "lr": 1e-3, "keep_optimizer": True}  # moments kept in Context.state
    end, history = run_simulation(client_app(clients.__getitem__), 2, start, make_strategy("fedavg", 2), 2, config,
                                  lambda r, arrays: scored.append(r) or {"score": float(r)}, progress=False, cpus=1)
    changed = {n for n in start if not np.array_equal(start[n].numpy(), end[n].numpy())}
    assert any(n.startswith("image_tower") for n in changed) and any(n.startswith("text_tower") for n in changed)
    assert "logit_scale" not in changed  # no client held pairs
    assert scored == [1, 2] and [r["round"] for r in history.rounds] == [1, 2]
    assert all(r["loss"] > 0 and r["score"] == r["round"] for r in history.rounds)
    model.load_state_dict(end.to_torch_state_dict())


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
    scores = Evaluator(model, pairs)(0, ArrayRecord(model.state_dict()))
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
