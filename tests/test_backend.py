"""optcore.backend() reports the build and what is usable now."""
import optcore
from optcore import _core


def test_backend_reports_cpu_isa_and_cuda_status():
    info = optcore.backend()
    assert info["cpu"]["isa"] == _core.cpu_isa()
    assert info["cpu"]["isa"] in ("base", "avx2", "avx512")
    assert info["cpu"]["max_threads"] >= 1
    cuda = info["cuda"]
    assert isinstance(cuda["built"], bool)
    if not cuda["devices"]:
        assert cuda.get("reason"), "no device must come with a reason"


def test_isa_can_be_lowered_not_raised():
    before = _core.cpu_isa()
    try:
        _core.set_cpu_isa("base")
        assert _core.cpu_isa() == "base"
        if _core.cpu_isa_detected() != "avx512":
            import pytest
            with pytest.raises(ValueError, match="not supported"):
                _core.set_cpu_isa("avx512")
    finally:
        _core.set_cpu_isa(before)
