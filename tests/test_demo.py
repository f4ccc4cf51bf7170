"""Smoke test of ``python -m optcore demo`` at a tiny size."""
import io
import json

import pytest

pytest.importorskip("sklearn", reason="the demo needs scikit-learn (pip install 'optcore[demo]')")
pytest.importorskip("matplotlib", reason="the demo needs matplotlib (pip install 'optcore[demo]')")

import optcore  # noqa: E402
from optcore import demo  # noqa: E402
from optcore.__main__ import main  # noqa: E402


def test_run_demo_tiny_writes_table_png_and_json(tmp_path):
    stream = io.StringIO()
    results = demo.run_demo(["adam", "sgd", "deltabardelta"], epochs=2, hidden=16, limit=200,
                            batch_size=32, progress=stream)
    assert [r.name for r in results] == ["Adam", "SGD", "DeltaBarDelta"]
    assert [r.full_batch for r in results] == [False, False, True]
    for r in results:
        assert len(r.epoch_loss) == 2 and len(r.epoch_test_accuracy) == 2
        assert r.steps == 2 * 7 and r.wall_s > 0 and 0 <= r.test_accuracy <= 1
        assert r.train_loss == r.train_loss  # not NaN
    assert "Adam" in stream.getvalue() and "100.0%" in stream.getvalue()
    table = demo.format_table(results)
    assert "test acc" in table and "DeltaBarDelta (full)" in table
    paths = demo.write_outputs(results, str(tmp_path))
    with open(paths["png"], "rb") as fh:
        assert fh.read(8) == b"\x89PNG\r\n\x1a\n"
    with open(paths["json"]) as fh:
        saved = json.load(fh)
    assert [s["name"] for s in saved] == ["Adam", "SGD", "DeltaBarDelta"]


def test_same_initialisation_for_every_optimizer():
    xtr, ytr, _, _ = demo.load_digits_split(limit=100)
    a = demo.build_mlp(64, 8, 10, rng=3)
    b = demo.build_mlp(64, 8, 10, rng=3)
    for p, q in zip(a.params(), b.params()):
        assert (p == q).all()


def test_cli_tiny(tmp_path, capsys):
    rc = main(["demo", "--optimizers", "momentum,rmsprop", "--epochs", "1", "--hidden", "8",
               "--limit", "120", "--out", str(tmp_path / "o"), "--no-progress"])
    out = capsys.readouterr().out
    assert rc == 0
    assert "Momentum" in out and "RMSProp" in out and "steps/s" in out
    assert (tmp_path / "o" / "learning_curves.png").exists()


def test_cli_errors(tmp_path, capsys):
    assert main(["demo", "--optimizers", "lbfgs", "--out", str(tmp_path)]) == 2
    assert "lbfgs" in capsys.readouterr().err
    assert main(["demo", "--epochs", "0", "--out", str(tmp_path)]) == 2
    if not optcore.backend()["cuda"].get("usable", False):
        assert main(["demo", "--device", "cuda", "--epochs", "1", "--out", str(tmp_path)]) == 2
        assert "cuda" in capsys.readouterr().err.lower()


def test_cli_state_dtypes(tmp_path, capsys):
    rc = main(["demo", "--optimizers", "adam,sgd,deltabardelta", "--epochs", "1", "--hidden", "8",
               "--limit", "120", "--out", str(tmp_path / "o"), "--no-progress",
               "--state-dtype", "float32", "int8", "bfloat16"])
    out = capsys.readouterr().out
    assert rc == 0
    for name in ("Adam[float32]", "Adam[int8]", "Adam[bfloat16]", "DeltaBarDelta[int8]"):
        assert name in out
    assert out.count("SGD") == 1  # no state: one run
