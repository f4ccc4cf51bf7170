"""optcore._cuda: the CUDA kernels (the compiled module ``optcore._cuda_ext``).

This wrapper exists so that ``import optcore._cuda`` never ends in a bare
loader traceback. The extension links the CUDA runtime statically and the
runtime loads the driver (``libcuda.so.1``) only on the first CUDA call, so on
a machine without a GPU or driver the import succeeds and
``optcore.backend()["cuda"]["reason"]`` says what is missing. When the
extension is absent (a build without nvcc) or cannot be loaded (a damaged
install, a library it needs is missing), the ImportError raised here says
which, in one line, with the loader's own message.
"""
from __future__ import annotations

import importlib as _importlib

try:
    _ext = _importlib.import_module("optcore._cuda_ext")
except ModuleNotFoundError as _exc:
    if _exc.name != "optcore._cuda_ext":
        raise
    raise ImportError(
        "optcore._cuda: this optcore build has no CUDA module (it was built without nvcc; "
        "install a CUDA wheel, or rebuild from source with the CUDA toolkit and OPTCORE_CUDA=ON). "
        "The CPU backend works.", name="optcore._cuda") from None
except ImportError as _exc:  # the file is there but the dynamic loader refused it
    raise ImportError(
        f"optcore._cuda: the CUDA module is installed but could not be loaded: {_exc}. "
        "The CPU backend works; reinstall optcore, or report this with the output of "
        "`python -m optcore info`.", name="optcore._cuda") from None

for _name in dir(_ext):
    if not _name.startswith("__"):
        globals()[_name] = getattr(_ext, _name)
__doc__ = f"{__doc__}\n{_ext.__doc__ or ''}"
del _name
