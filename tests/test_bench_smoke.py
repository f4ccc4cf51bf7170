"""Smoke tests of the benchmark harness (bench/) and the bandwidth probe."""
from __future__ import annotations

import json
import os
import sys

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

_core = pytest.importorskip("optcore._core")
from bench import harness  # noqa: E402


# ---------------------------------------------------------------- probe kernel
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("sizes", [[0], [1], [37], [70001], [5, 0, 33000, 1]])
def test_probe_writes_mean_of_reads(dtype, sizes):
    rng = np.random.default_rng(1)
    theta = [rng.standard_normal(n).astype(dtype) for n in sizes]
    g = [rng.standard_normal(n).astype(dtype) for n in sizes]
    s = [np.full(n, np.nan, dtype) for n in sizes]  # written only: poisoned
    want = [(t.astype(np.float64) + gg) / 2 for t, gg in zip(theta, g)]
    probe = _core.BandwidthProbe([theta, g], [theta, s])
    probe.run()
    tol = 1e-6 if dtype == np.float32 else 1e-14
    for t, ss, w in zip(theta, s, want):
        np.testing.assert_allclose(t, w, rtol=tol, atol=tol)
        np.testing.assert_allclose(ss, w, rtol=tol, atol=tol)
    assert probe.total_elements == sum(sizes)
    assert probe.bytes == sum(sizes) * np.dtype(dtype).itemsize * 4


def test_probe_unaligned_views_and_single_arrays():
    base = np.arange(100001, dtype=np.float32)
    a, b = base[1:], np.ones(100000, np.float32)
    out = np.full(100000, np.nan, np.float32)
    _core.bandwidth_probe([a, b], [out])
    np.testing.assert_allclose(out, (a + 1) / 2)
    _core.bandwidth_probe([], [out])  # write-only stream: constant
    assert np.all(out == 0)


def test_probe_rejects_bad_input_before_writing():
    a = np.zeros(8, np.float32)
    ro = np.zeros(8, np.float32)
    ro.flags.writeable = False
    with pytest.raises(ValueError, match=r"writes\[0\]\[0\].*read-only"):
        _core.BandwidthProbe([a], [ro])
    with pytest.raises(ValueError, match=r"writes\[0\]\[0\].*elements"):
        _core.BandwidthProbe([a], [np.zeros(9, np.float32)])
    with pytest.raises(TypeError, match=r"reads\[1\]\[0\].*same dtype"):
        _core.BandwidthProbe([a, np.zeros(8)], [a])
    with pytest.raises(TypeError, match="float32 or float64"):
        _core.BandwidthProbe([np.zeros(8, np.int32)], [a])
    with pytest.raises(ValueError, match="C-contiguous"):
        _core.BandwidthProbe([np.zeros(16, np.float32)[::2]], [a])
    with pytest.raises(ValueError, match=r"writes\[0\]: has 1 arrays, reads\[0\] has 2"):
        _core.BandwidthProbe([[a, a]], [[a]])
    with pytest.raises(TypeError, match="numpy array"):
        _core.BandwidthProbe([[a, [1.0]]], [[a, a]])


@pytest.mark.parametrize("code", [np.uint8, np.uint16])
@pytest.mark.parametrize("n_narrow", [1, 2, 3])
@pytest.mark.parametrize("sizes", [[0], [1], [37, 4099], [70001]])
def test_probe_narrow_streams_walk_every_element(rng, code, n_narrow, sizes):
    # The low-precision rows' probe: θ, g float32 (θ in place) plus 1- or 2-byte in-place
    # streams; every narrow element comes back incremented (wrapping), every θ the mean.
    theta = [rng.standard_normal(n).astype(np.float32) for n in sizes]
    g = [rng.standard_normal(n).astype(np.float32) for n in sizes]
    want = [(t.astype(np.float64) + gg) / 2 for t, gg in zip(theta, g)]
    top = np.iinfo(code).max
    narrow = [[rng.integers(0, top, n, endpoint=True).astype(code) for n in sizes]
              for _ in range(n_narrow)]
    before = [[a.copy() for a in s] for s in narrow]
    probe = _core.BandwidthProbe([theta, g], [theta], narrow=narrow)
    probe.run()
    for t, w in zip(theta, want):
        np.testing.assert_allclose(t, w, rtol=1e-6, atol=1e-6)
    for s, b in zip(narrow, before):
        for a, a0 in zip(s, b):
            np.testing.assert_array_equal(a, (a0.astype(np.int64) + 1) % (top + 1))
    width = np.dtype(code).itemsize
    assert probe.bytes == sum(sizes) * (4 * 3 + 2 * width * n_narrow)


def test_probe_narrow_rejects_bad_input():
    a = np.zeros(8, np.float32)
    n8 = np.zeros(8, np.uint8)
    with pytest.raises(TypeError, match=r"narrow\[0\]\[0\].*uint8 or uint16"):
        _core.BandwidthProbe([a], [a], narrow=[np.zeros(8, np.int8)])
    with pytest.raises(TypeError, match=r"narrow\[1\]\[0\].*same dtype"):
        _core.BandwidthProbe([a], [a], narrow=[n8, np.zeros(8, np.uint16)])
    with pytest.raises(TypeError, match=r"narrow\[0\]\[0\].*float32 streams only"):
        _core.BandwidthProbe([np.zeros(8)], [np.zeros(8)], narrow=[n8])
    with pytest.raises(ValueError, match=r"narrow\[0\]\[0\].*elements"):
        _core.BandwidthProbe([a], [a], narrow=[np.zeros(9, np.uint8)])
    with pytest.raises(ValueError, match="narrow: with narrow streams"):
        _core.BandwidthProbe([a], [], narrow=[n8])
    with pytest.raises(ValueError, match="narrow: with narrow streams"):
        _core.BandwidthProbe([a], [a], narrow=[n8] * 4)
    ro = np.zeros(8, np.uint8)
    ro.flags.writeable = False
    with pytest.raises(ValueError, match=r"narrow\[0\]\[0\].*read-only"):
        _core.BandwidthProbe([a], [a], narrow=[ro])


# ---------------------------------------------------------------- harness
def test_timing_quantiles_and_measure():
    t = harness.timing_from_samples([5.0, 1.0, 2.0, 3.0, 4.0])
    assert (t.median_s, t.min_s, t.n) == (3.0, 1.0, 5)
    assert t.p20_s == pytest.approx(1.8) and t.p80_s == pytest.approx(4.2)
    calls = []
    m = harness.measure(lambda: calls.append(1), repeats=7, warmup=2)
    assert m.n == 7 and len(calls) == 9
    m = harness.measure(lambda: None, min_time_s=0.0, min_repeats=4, warmup=0)
    assert m.n >= 4 and m.p20_s <= m.median_s <= m.p80_s


def test_row_derives_gbps_and_probe_pct():
    t = harness.Timing(0.5, 0.4, 0.6, 0.4, 5)
    p = harness.Timing(0.25, 0.2, 0.3, 0.2, 5)
    r = harness.row("s", "c", "impl", t, 2e9, p, rule="Adam")
    assert r["gbps"] == pytest.approx(4.0) and r["probe_pct"] == pytest.approx(50.0)
    assert r["median_ms"] == pytest.approx(500.0) and r["rule"] == "Adam"
    text = harness.format_table([r, harness.row("s", "c", "none", None, 1, note="n/a")])
    assert "probe_pct" in text and "n/a" in text


def test_row_best_pct_against_best_streaming_bandwidth():
    t = harness.Timing(0.5, 0.4, 0.6, 0.4, 5)
    r = harness.row("s", "c", "impl", t, 2e9, best_gbps=8.0)
    assert r["gbps"] == pytest.approx(4.0) and r["best_pct"] == pytest.approx(50.0)
    calls = []
    lazy = lambda: calls.append(1) or 16.0  # noqa: E731
    assert harness.row("s", "c", "impl", t, 2e9, best_gbps=lazy)["best_pct"] == pytest.approx(25.0)
    # No bytes (or no timing): no figure, and the lazy measurement is not started.
    assert "best_pct" not in harness.row("s", "c", "impl", t, None, best_gbps=lazy)
    assert "best_pct" not in harness.row("s", "c", "impl", None, 2e9, best_gbps=lazy)
    assert len(calls) == 1
    # A suite's fixed column list gets the column next to probe_pct.
    text = harness.format_table([harness.row("s", "c", "i", t, 2e9, t, best_gbps=8.0)],
                                ["case", "impl", "gbps", "probe_pct", "note"])
    header = text.splitlines()[0].split()
    assert header == ["case", "impl", "gbps", "probe_pct", "best_pct", "note"]


def test_context_rows_measure_best_stream_once(monkeypatch):
    measured = []

    def fake(device="cpu", quick=False, timer=None):
        measured.append((device, quick))
        return harness.BestStream(20.0, "1 read", {"1 read": 20.0, "2 reads + 1 write": 10.0}, 64)

    monkeypatch.setattr(harness, "measure_best_stream", fake)
    ctx = harness.Context(quick=True)
    t = harness.Timing(0.5, 0.4, 0.6, 0.4, 5)
    assert "best_pct" not in ctx.row("s", "c", "none", t, None) and not measured  # not needed yet
    assert ctx.row("s", "c", "i", t, 2e9)["best_pct"] == pytest.approx(20.0)
    assert ctx.row("s", "c", "j", t, 4e9)["best_pct"] == pytest.approx(40.0)
    assert measured == [("cpu", True)]  # once per context (one context per suite)
    assert harness.Context(quick=True).row("s", "c", "k", t, 1e9)["best_pct"] == pytest.approx(10.0)
    assert measured == [("cpu", True)] * 2


def test_measure_best_stream_patterns():
    best = harness.measure_best_stream("cpu", quick=True,
                                       timer=lambda fn, **kw: harness.measure(fn, repeats=3, warmup=1))
    assert set(best.patterns) == set(harness.BEST_STREAM_PATTERNS)
    assert all(v > 0 for v in best.patterns.values())
    assert best.gbps == max(best.patterns.values()) and best.patterns[best.pattern] == best.gbps


def _assert_best_pct(doc: dict, impls=("optcore",)) -> None:
    """Every row with bytes has best_pct = gbps / the run's best streaming figure."""
    best = doc["best_stream"]["gbps"]
    assert best > 0 and doc["best_stream"]["pattern"] in harness.BEST_STREAM_PATTERNS
    with_bytes = [r for r in doc["rows"] if "gbps" in r]
    assert with_bytes
    for r in with_bytes:
        assert r["best_pct"] == pytest.approx(100.0 * r["gbps"] / best), r
    assert any(r["impl"].startswith(impls) for r in with_bytes)


# ---------------------------------------------------------------- optimizers suite, --quick
def _run_quick(suite: str, tmp_path) -> dict:
    """``python -m bench --suite SUITE --quick`` from the repository root; its JSON document."""
    from bench.__main__ import main
    path = tmp_path / f"{suite}.json"
    cwd = os.getcwd()
    os.chdir(ROOT)
    try:
        assert main(["--suite", suite, "--quick", "--json", str(path)]) == 0
    finally:
        os.chdir(cwd)
    return json.loads(path.read_text())


def test_optimizers_suite_quick(tmp_path, capsys):
    from bench.suites import optimizers
    doc = _run_quick("optimizers", tmp_path)
    out = capsys.readouterr().out
    assert "DeltaBarDelta" in out and "probe_pct" in out and "best_pct" in out
    _assert_best_pct(doc)
    assert doc["machine"]["cpu_isa"] in ("base", "avx2", "avx512")
    rows = doc["rows"]
    cases = {label for label, _ in optimizers.cases(True)}
    for case in cases:
        for rule in optimizers.RULES:
            got = {r["impl"]: r for r in rows if r["case"] == case and r["rule"] == rule}
            assert {"probe", "optcore", "numpy", "torch_fused", "torch_foreach"} <= set(got), (case, rule)
            for impl in ("probe", "optcore", "numpy"):
                r = got[impl]
                assert r["median_ms"] > 0 and r["p20_ms"] <= r["median_ms"] <= r["p80_ms"]
                assert r["gbps"] > 0 and r["probe_pct"] > 0
            assert "x_numpy" in got["optcore"]
            if rule in optimizers.TORCH:
                assert "median_ms" in got["torch_foreach"], got["torch_foreach"]
                assert "x_foreach" in got["optcore"]
            else:
                assert "note" in got["torch_foreach"]


def test_numpy_reference_matches_optcore():
    """The NumPy baseline computes the same update as optcore (so the speed
    comparison is between equal work)."""
    import optcore
    from bench.suites import optimizers
    rng = np.random.default_rng(3)
    for rule, (kw, _) in optimizers.RULES.items():
        theta = rng.standard_normal(1000).astype(np.float32)
        a, b = theta.copy(), theta.copy()
        opt = getattr(optcore, rule)([a], **kw)
        ref = optimizers.NumpyOptimizer(rule, [b], **kw)
        for _ in range(3):
            g = rng.standard_normal(1000).astype(np.float32)
            opt.step([g])
            ref.step([g])
        np.testing.assert_allclose(a, b, rtol=2e-4, atol=2e-5, err_msg=rule)


# ---------------------------------------------------------------- training-loop suite
def test_training_loop_suite_quick(tmp_path, capsys):
    from bench.suites import training_loop
    doc = _run_quick("training-loop", tmp_path)
    rows = doc["rows"]
    assert "bytes_ratio" in capsys.readouterr().out
    _assert_best_pct(doc)
    for case, _ in training_loop.cases(True):
        got = {r["impl"]: r for r in rows if r["case"] == case}
        for impl in ("probe plain", "optcore Adam", "probe clip+ema", "optcore Adam+clip+ema",
                     "torch Adam(fused)", "torch clip+Adam(fused)+lerp"):
            assert got[impl]["median_ms"] > 0, (case, impl)
        fused = got["optcore Adam+clip+ema"]
        assert fused["bytes_ratio"] > 0 and fused["x_torch"] > 0 and fused["probe_pct"] > 0


def test_training_loop_torch_chain_is_the_same_work():
    """torch's clip_grad_norm_ + fused Adam + _foreach_lerp_ chain computes what optcore's
    Adam(max_grad_norm=, average="ema") does in one pass: same parameters and averages."""
    torch = pytest.importorskip("torch")
    import optcore
    from bench.suites import training_loop as tl
    rng = np.random.default_rng(5)
    sizes = [1000, 37, 4096]
    theta = [rng.standard_normal(n).astype(np.float32) for n in sizes]
    ours = [t.copy() for t in theta]
    theirs = [t.copy() for t in theta]
    grads = [rng.standard_normal(n).astype(np.float32) for n in sizes]
    max_norm = tl._max_norm(grads)
    opt = optcore.Adam(ours, **tl.ADAM, max_grad_norm=max_norm, average="ema",
                       average_decay=tl.EMA_DECAY)
    tgrads = [g.copy() for g in grads]
    step, note, averages = tl._torch_chain(theirs, tgrads, max_norm, ema=True)
    assert step is not None, note
    for _ in range(4):
        fresh = [rng.standard_normal(n).astype(np.float32) for n in sizes]
        for tg, g in zip(tgrads, fresh):
            tg[...] = g
        opt.step(fresh)
        step()
    for a, b in zip(ours, theirs):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    for a, b in zip(opt.averaged_params(), averages):
        np.testing.assert_allclose(a, b.numpy(), rtol=1e-5, atol=1e-6)
    assert np.any(ours[0] != theta[0])
    assert opt.last_grad_norm > max_norm  # every step clipped


@pytest.mark.parametrize("suite", ["probe", "batchnorm", "lbfgs"])
def test_every_suite_reports_best_pct(suite, tmp_path):
    """Suites get best_pct from the harness's row helper without doing anything."""
    _assert_best_pct(_run_quick(suite, tmp_path), impls=("optcore", "probe"))
