import os
import sys

import pytest

sys.path.insert(0, os.path.dirname(__file__))
import _bn_shim  # noqa: E402  (private test shim, see its docstring)


@pytest.fixture(autouse=True)
def batch_norm_kernels(monkeypatch):
    """Real optcore.batch_norm kernels when built; the private NumPy shim otherwise."""
    return "shim" if _bn_shim.install_if_missing(monkeypatch) else "optcore"
