"""``python -m optcore info``: the build and the environment, for a bug report."""
from __future__ import annotations

import importlib
import os
import platform
import sys
from typing import Any, Dict, List, Optional

#: Array frameworks optcore works with; reported with their versions when importable.
FRAMEWORKS = ("numpy", "cupy", "torch")


def _framework(name: str) -> Dict[str, Any]:
    try:
        module = importlib.import_module(name)
    except Exception as exc:  # an absent or broken install: report it, never fail
        return {"importable": False, "error": f"{type(exc).__name__}: {exc}".splitlines()[0]}
    entry: Dict[str, Any] = {"importable": True, "version": getattr(module, "__version__", "?")}
    if name == "torch":
        entry["cuda"] = getattr(module.version, "cuda", None)
        try:
            entry["cuda_available"] = bool(module.cuda.is_available())
        except Exception:  # noqa: BLE001 - a torch without a driver may raise here
            entry["cuda_available"] = False
    if name == "cupy":
        try:
            entry["cuda_runtime"] = module.cuda.runtime.runtimeGetVersion()
        except Exception:  # noqa: BLE001
            entry["cuda_runtime"] = None
    return entry


def collect() -> Dict[str, Any]:
    """Everything ``info`` prints, as a dict (also ``python -m optcore info --json``)."""
    import optcore
    from optcore import _core

    report = optcore.backend()
    build = _core.build_info()
    cpu = report["cpu"]
    cpu.update(isas_compiled=build["isas_compiled"], compiler=build["compiler"],
               openmp=build["openmp"], assertions=build["assertions"],
               omp_num_threads=os.environ.get("OMP_NUM_THREADS"),
               isa_override=os.environ.get("OPTCORE_CPU_ISA"))
    return {
        "optcore": optcore.__version__,
        "location": os.path.dirname(optcore.__file__),
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "machine": platform.machine(),
        "cpu": cpu,
        "cuda": report["cuda"],
        "frameworks": {name: _framework(name) for name in FRAMEWORKS},
    }


def _openmp_name(date: Optional[int]) -> str:
    names = {201107: "3.1", 201307: "4.0", 201511: "4.5", 201811: "5.0", 202011: "5.1", 202111: "5.2"}
    if date is None:
        return "not compiled in"
    return f"{names.get(date, '?')} ({date})"


def format_report(info: Dict[str, Any]) -> str:
    """The human-readable report: one ``key: value`` line per fact."""
    cpu, cuda = info["cpu"], info["cuda"]
    lines: List[str] = [
        f"optcore {info['optcore']} ({info['location']})",
        f"python {info['python']} on {info['platform']}",
        f"cpu isa: {cpu['isa']} (detected {cpu['isa_detected']}; compiled "
        f"{', '.join(cpu['isas_compiled'])}"
        + (f"; OPTCORE_CPU_ISA={cpu['isa_override']}" if cpu["isa_override"] else "") + ")",
        f"openmp threads: {cpu['max_threads']}"
        + (f" (OMP_NUM_THREADS={cpu['omp_num_threads']})" if cpu["omp_num_threads"] else "")
        + f"; OpenMP {_openmp_name(cpu['openmp'])}",
        f"compiler: {cpu['compiler']}" + ("; assertions on" if cpu["assertions"] else ""),
    ]
    if not cuda["built"]:
        lines.append("cuda module: not built")
    else:
        arches = cuda["architectures"]
        cubins = ", ".join(f"sm_{a}" for a in arches["cubin"]) or "none"
        ptx = ", ".join(f"compute_{a}" for a in arches["ptx"]) or "none"
        runtime = cuda["runtime_version"]
        lines.append(f"cuda module: built with CUDA runtime {runtime // 1000}.{runtime % 1000 // 10}"
                     f" (linked statically); code for {cubins}; PTX {ptx}")
        driver = cuda["driver_version"]
        lines.append("cuda driver: " + (f"{driver // 1000}.{driver % 1000 // 10}" if driver
                                        else "none"))
        for d in cuda["devices"]:
            runs = d["runs"] if d["runnable"] else "NOTHING in this build runs on it"
            lines.append(f"cuda:{d['index']}: {d['name']}, compute capability "
                         f"{d['compute_capability']}: {runs}")
    if not cuda["usable"]:
        lines.append(f"cuda usable: no ({cuda.get('reason', 'unknown')})")
    else:
        lines.append("cuda usable: yes")
    for name, fw in info["frameworks"].items():
        if not fw["importable"]:
            lines.append(f"{name}: not importable ({fw['error']})")
            continue
        extra = ""
        if name == "torch":
            extra = f" (CUDA {fw['cuda'] or 'none'}; cuda available: {fw['cuda_available']})"
        elif name == "cupy" and fw.get("cuda_runtime"):
            extra = f" (CUDA runtime {fw['cuda_runtime']})"
        lines.append(f"{name}: {fw['version']}{extra}")
    return "\n".join(lines)
