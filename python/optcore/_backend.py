"""What this build of optcore contains and what it can use right now."""
from __future__ import annotations

from typing import Any, Dict

from . import _core


def backend() -> Dict[str, Any]:
    """Report the CPU instruction set in use, the CUDA module and the visible devices.

    Example
    -------
    >>> import optcore
    >>> optcore.backend()["cpu"]["isa"] in ("base", "avx2", "avx512")
    True
    """
    info: Dict[str, Any] = {
        "cpu": {
            "isa": _core.cpu_isa(),
            "isa_detected": _core.cpu_isa_detected(),
            "max_threads": _core.max_threads(),
        },
        "cuda": {"built": False, "devices": []},
    }
    try:
        from . import _cuda
    except ImportError as exc:
        info["cuda"]["reason"] = f"the CUDA module was not built ({exc})"
        return info
    cuda = info["cuda"]
    cuda["built"] = True
    for name in ("runtime_version", "driver_version"):
        fn = getattr(_cuda, name, None)
        if fn is not None:
            try:
                cuda[name] = fn()
            except Exception as exc:  # no driver: report, don't fail
                cuda[name] = None
                cuda["reason"] = str(exc)
    count = 0
    if hasattr(_cuda, "device_count"):
        try:
            count = _cuda.device_count()
        except Exception as exc:
            cuda["reason"] = str(exc)
    for i in range(count):
        name = _cuda.device_name(i) if hasattr(_cuda, "device_name") else f"cuda:{i}"
        cuda["devices"].append({"index": i, "name": name})
    if count == 0 and "reason" not in cuda:
        cuda["reason"] = "no CUDA device is visible"
    cuda["usable"] = count > 0 and hasattr(_cuda, "UpdatePlan")
    return info
