"""What this build of optcore contains and what it can use right now."""
from __future__ import annotations

import ctypes
import re
from typing import Any, Dict, List, Optional, Tuple

from . import _core

#: The soname the CUDA runtime loads the driver by (NVIDIA's libcuda).
DRIVER_LIBRARY = "libcuda.so.1"


def parse_architectures(built: str) -> Dict[str, List[str]]:
    """Split a CMake ``CUDA_ARCHITECTURES`` list into the cubins and PTX it produces.

    ``"80-real,90"`` gives cubins ``["80", "90"]`` and PTX ``["90"]``: a bare
    entry means both, ``-real`` machine code only, ``-virtual`` PTX only.
    Entries keep an arch-specific suffix (``"90a"``).

    >>> parse_architectures("80-real,86-real,100-real,100-virtual")
    {'cubin': ['80', '86', '100'], 'ptx': ['100']}
    """
    cubin: List[str] = []
    ptx: List[str] = []
    for entry in (e.strip() for e in re.split(r"[;,]", built) if e.strip()):
        arch, _, kind = entry.partition("-")
        if kind in ("", "real"):
            cubin.append(arch)
        if kind in ("", "virtual"):
            ptx.append(arch)
    return {"cubin": cubin, "ptx": ptx}


def _split(arch: str) -> Tuple[int, int, str]:
    """"100" -> (10, 0, ""); "90a" -> (9, 0, "a")."""
    m = re.fullmatch(r"(\d+)(\d)([a-z]?)", arch)
    if m is None:
        raise ValueError(f"architecture {arch!r} is not of the form <major><minor>[suffix]")
    return int(m.group(1)), int(m.group(2)), m.group(3)


def code_for(capability: Tuple[int, int], architectures: Dict[str, List[str]]) -> Optional[str]:
    """Which code of ``architectures`` a GPU of compute ``capability`` runs, or None.

    A cubin for sm_XY runs on X.Z for Z >= Y (same major; an ``a`` variant only
    on X.Y itself, an ``f`` variant on its family); PTX for compute_XY is
    JIT-compiled by the driver for any X.Y or newer (not the ``a``/``f`` variants).
    The best match wins: the newest cubin, else the newest PTX.

    >>> code_for((8, 9), {"cubin": ["80", "86"], "ptx": []})
    'sm_86 cubin'
    >>> code_for((12, 0), {"cubin": ["90"], "ptx": ["100"]})
    'compute_100 PTX (JIT-compiled by the driver)'
    >>> code_for((7, 5), {"cubin": ["80"], "ptx": ["80"]}) is None
    True
    """
    major, minor = capability
    cubins = []
    for arch in architectures.get("cubin", []):
        a_major, a_minor, suffix = _split(arch)
        if suffix == "a":
            fits = (a_major, a_minor) == (major, minor)
        else:
            fits = a_major == major and a_minor <= minor
        if fits:
            cubins.append(((a_major, a_minor), arch))
    if cubins:
        return f"sm_{max(cubins)[1]} cubin"
    ptx = []
    for arch in architectures.get("ptx", []):
        a_major, a_minor, suffix = _split(arch)
        if not suffix and (a_major, a_minor) <= (major, minor):
            ptx.append(((a_major, a_minor), arch))
    if ptx:
        return f"compute_{max(ptx)[1]} PTX (JIT-compiled by the driver)"
    return None


def driver_library_error() -> Optional[str]:
    """None when the NVIDIA driver library loads, else the loader's message."""
    try:
        ctypes.CDLL(DRIVER_LIBRARY)
    except OSError as exc:
        return str(exc)
    return None


def _describe_arches(architectures: Dict[str, List[str]]) -> str:
    parts = [f"sm_{a}" for a in architectures["cubin"]]
    parts += [f"compute_{a} PTX" for a in architectures["ptx"]]
    return ", ".join(parts) or "none"


def _no_driver_reason(status: Dict[str, Any], runtime: Optional[int]) -> str:
    """Why cudaGetDeviceCount failed, in words a user can act on."""
    missing = driver_library_error()
    if missing is not None:
        return (f"no NVIDIA driver: {DRIVER_LIBRARY} cannot be loaded ({missing}); "
                "the CPU backend works")
    text = f"{status['name']}: {status['message']}"
    if status["name"] == "cudaErrorInsufficientDriver" and runtime:
        need = f"{runtime // 1000}.{runtime % 1000 // 10}"
        text += (f" (this module's CUDA runtime is {need}; update the NVIDIA driver to one that "
                 f"supports CUDA {need})")
    return text


def _cuda_report() -> Dict[str, Any]:
    cuda: Dict[str, Any] = {"built": False, "devices": [], "usable": False}
    try:
        from . import _cuda
    except ImportError as exc:
        cuda["reason"] = str(exc)
        return cuda
    cuda["built"] = True
    built = _cuda.compiled_architectures() if hasattr(_cuda, "compiled_architectures") else ""
    arches = parse_architectures(built)
    cuda["architectures"] = {"cmake": built, **arches}
    cuda["runtime_version"] = _cuda.runtime_version()
    cuda["driver_version"] = _cuda.driver_version()
    status = _cuda.device_count_status()
    if status["code"] != 0:
        cuda["reason"] = _no_driver_reason(status, cuda["runtime_version"])
        return cuda
    if status["count"] == 0:
        cuda["reason"] = "no CUDA device is visible"
        return cuda
    for i in range(status["count"]):
        device: Dict[str, Any] = {"index": i, "name": _cuda.device_name(i)}
        cc = _cuda.compute_capability(i)
        device["compute_capability"] = f"{cc['major']}.{cc['minor']}"
        expected = code_for((cc["major"], cc["minor"]), arches)
        image = _cuda.kernel_image(i)
        if image["code"] == 0:
            v = image["binary_version"]
            device["runs"] = expected or f"sm_{v} cubin"
            device["runnable"] = True
        else:
            device["runnable"] = False
            device["reason"] = (
                f"no code in this optcore build can run on this GPU (compute capability "
                f"{device['compute_capability']}); it was compiled for {_describe_arches(arches)} "
                f"[{image['name']}: {image['message']}]. Rebuild from source for this GPU: "
                f"CUDAARCHS={cc['major']}{cc['minor']} pip install optcore --no-binary optcore")
        cuda["devices"].append(device)
    cuda["usable"] = any(d["runnable"] for d in cuda["devices"])
    if not cuda["usable"]:
        cuda["reason"] = cuda["devices"][0]["reason"]
    return cuda


def backend() -> Dict[str, Any]:
    """Report the CPU instruction set in use, the CUDA module and the visible devices.

    ``["cuda"]`` holds ``built`` (the CUDA module is installed), ``architectures``
    (what it was compiled for: cubins and PTX), the runtime and driver versions,
    ``devices`` (each with its compute capability, ``runnable`` and which code it
    runs, or why none of it can), ``usable``, and ``reason`` when it is not usable
    (no module, no driver, no device, no code for the GPU). Never raises for a
    missing GPU or driver.

    Example
    -------
    >>> import optcore
    >>> optcore.backend()["cpu"]["isa"] in ("base", "avx2", "avx512")
    True
    """
    return {
        "cpu": {
            "isa": _core.cpu_isa(),
            "isa_detected": _core.cpu_isa_detected(),
            "max_threads": _core.max_threads(),
        },
        "cuda": _cuda_report(),
    }
