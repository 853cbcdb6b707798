"""The command line, run as a user runs it: a subprocess, exit codes, one-line errors."""

import json
import subprocess
import sys

import pytest


def run(*args, check=False):
    proc = subprocess.run([sys.executable, "-m", "polymodal.cli", *map(str, args)], capture_output=True, text=True,
                          timeout=600)
    if check and proc.returncode:
        raise AssertionError(proc.stderr + proc.stdout)
    return proc


def test_help_lists_the_commands():
    out = run("--help", check=True).stdout
    for command in ("data", "train", "eval", "similarity", "demo", "models"):
        assert command in out


@pytest.mark.slow
def test_models_lists_presets():
    out = run("models", "shapes-*", check=True).stdout.split()
    assert "shapes-cnn-small" in out and "shapes-vit-small" in out


@pytest.mark.parametrize("args,message", [
    (("eval", "no/such/ckpt", "no/such/data"), "no such checkpoint directory"),
    (("data", "info", "no/such/data"), "no such file or directory"),
    (("similarity", "x.png", "a red circle", "--model", "no/such/ckpt"), "no such checkpoint directory"),
    (("train", "no/such/data", "--time-budget", "soon"), "not a duration"),
    (("train", "no/such/data"), "no such file or directory"),
])
@pytest.mark.slow
def test_bad_input_exits_non_zero_with_one_line(args, message):
    proc = run(*args)
    assert proc.returncode != 0
    assert message in proc.stderr + proc.stdout
    assert "Traceback" not in proc.stderr


@pytest.mark.parametrize("how", ["--debug", "POLYMODAL_DEBUG=1"])
def test_debug_shows_the_traceback_before_the_one_line(how, tmp_path, monkeypatch, capsys):
    """In process (main() as the console script runs it), so that the test is fast; the plain
    case without a traceback is test_bad_input_exits_non_zero_with_one_line."""
    from polymodal.cli import main

    monkeypatch.setenv("COLUMNS", "400")  # one line, however long the path
    monkeypatch.setenv("POLYMODAL_DEBUG", "1" if how.startswith("POLYMODAL_DEBUG") else "0")  # restored after
    flags = ["--debug"] if how == "--debug" else []
    monkeypatch.setattr("sys.argv", ["polymodal", *flags, "data", "info", str(tmp_path / "missing")])
    with pytest.raises(SystemExit) as exit_:
        main()
    err = capsys.readouterr().err
    assert exit_.value.code == 2
    assert err.startswith("Traceback (most recent call last)") and "polymodal.errors.DataError" in err
    assert err.rstrip().splitlines()[-1].startswith("error: ") and "no such file or directory" in err


def test_without_debug_an_error_is_one_line(tmp_path, monkeypatch, capsys):
    from polymodal.cli import main

    monkeypatch.setenv("COLUMNS", "400")
    monkeypatch.setenv("POLYMODAL_DEBUG", "0")
    monkeypatch.setattr("sys.argv", ["polymodal", "data", "info", str(tmp_path / "missing")])
    with pytest.raises(SystemExit) as exit_:
        main()
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and "Traceback" not in err and err.startswith("error: ") and err.count("\n") == 1


@pytest.mark.slow
def test_unknown_model_is_named(tmp_path, shapes_dir):
    proc = run("train", shapes_dir, "--model", "shapes-cnn-hueg", "--out", tmp_path / "m")
    assert proc.returncode == 2
    assert "unknown model 'shapes-cnn-hueg'" in proc.stderr and "Traceback" not in proc.stderr


@pytest.mark.slow
def test_generate_inspect_train_eval_similarity(tmp_path):
    data, model = tmp_path / "data", tmp_path / "model"
    run("data", "shapes", data, "--n", 300, "--val", 50, "--test", 60, "--unseen", 40, "--seed", 2, check=True)
    info = run("data", "info", data, check=True).stdout
    assert "test_unseen" in info and "no records skipped" in info
    run("train", data, "--out", model, "--model", "shapes-cnn-tiny", "--epochs", 1, "--batch-size", 64, check=True)
    run("eval", model, data, "--json", tmp_path / "m.json", check=True)
    metrics = json.loads((tmp_path / "m.json").read_text())
    assert set(metrics) >= {"test", "test_unseen"} and "R@1" in metrics["test"]["text_to_image"]
    image = next((data / "images" / "test").iterdir())
    out = run("similarity", image, "a small red circle", "a big blue square", "--model", model, check=True).stdout
    assert "a small red circle" in out and "probability" in out


@pytest.mark.slow
def test_convert_a_csv_to_a_manifest(tmp_path):
    from PIL import Image

    Image.new("RGB", (8, 8)).save(tmp_path / "a.png")
    (tmp_path / "pairs.csv").write_text("filepath,title\na.png,a black square\nmissing.png,gone\n")
    proc = run("data", "convert", tmp_path / "pairs.csv", tmp_path / "out", check=True)
    assert "skipped 1" in proc.stdout
    line = json.loads((tmp_path / "out" / "manifest.jsonl").read_text())
    assert line["image"] == "../a.png" and line["text"] == ["a black square"]
    assert run("data", "info", tmp_path / "out", check=True).returncode == 0


def test_the_command_line_starts_without_torch():
    """`polymodal --help` answers at once: nothing the CLI imports at start loads torch."""
    probe = "import sys, polymodal.cli; sys.exit('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", probe]).returncode == 0
