"""What an installed optcore says about itself: ``python -m optcore info``, the
CUDA architecture bookkeeping, and the import without a GPU driver or with a
CUDA module the loader refuses (each in a subprocess with the condition made
real, never by mocking optcore itself)."""
import json
import os
import re
import shutil
import subprocess
import sys

import pytest

import optcore
from optcore import _backend

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGE = os.path.dirname(optcore.__file__)


def _cuda_built() -> bool:
    try:
        import optcore._cuda  # noqa: F401
    except ImportError:
        return False
    return True


def _run(code, env=None, timeout=120):
    full = dict(os.environ)
    full.update(env or {})
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env=full, timeout=timeout, cwd=REPO)


def _hidden_driver_env(tmp_path):
    """An LD_LIBRARY_PATH whose libcuda.so.1 is not a library: the dynamic loader
    stops at it, so the process sees no NVIDIA driver even where one is installed."""
    stub = tmp_path / "no-driver"
    stub.mkdir()
    (stub / "libcuda.so.1").write_bytes(b"not the NVIDIA driver\n" * 200)
    return {"LD_LIBRARY_PATH": f"{stub}:{os.environ.get('LD_LIBRARY_PATH', '')}"}


# ---------------------------------------------------------------- architectures

def test_parse_architectures_splits_cubins_and_ptx():
    release = "80-real,86-real,89-real,90-real,100-real,100-virtual"
    assert _backend.parse_architectures(release) == {
        "cubin": ["80", "86", "89", "90", "100"], "ptx": ["100"]}
    assert _backend.parse_architectures("90") == {"cubin": ["90"], "ptx": ["90"]}
    assert _backend.parse_architectures("80;90a-real") == {"cubin": ["80", "90a"], "ptx": ["80"]}
    assert _backend.parse_architectures("") == {"cubin": [], "ptx": []}


@pytest.mark.parametrize("cc, expected", [
    ((8, 0), "sm_80 cubin"),
    ((8, 6), "sm_86 cubin"),
    ((8, 7), "sm_86 cubin"),          # Orin: sm_86 code runs on 8.7
    ((8, 9), "sm_89 cubin"),
    ((9, 0), "sm_90 cubin"),
    ((10, 0), "sm_100 cubin"),
    ((10, 3), "sm_100 cubin"),        # B300
    ((12, 0), "compute_100 PTX (JIT-compiled by the driver)"),   # RTX 50xx: PTX only
    ((7, 5), None),                   # Turing: nothing in the release list runs
    ((7, 0), None),
])
def test_release_list_covers_the_gpus_users_have(cc, expected):
    release = _backend.parse_architectures("80-real,86-real,89-real,90-real,100")
    assert _backend.code_for(cc, release) == expected


def test_code_for_respects_major_versions_and_arch_specific_cubins():
    assert _backend.code_for((9, 0), {"cubin": ["80"], "ptx": []}) is None   # no cross-major cubin
    assert _backend.code_for((9, 0), {"cubin": ["80"], "ptx": ["80"]}).startswith("compute_80")
    assert _backend.code_for((9, 0), {"cubin": ["90a"], "ptx": []}) == "sm_90a cubin"
    assert _backend.code_for((10, 0), {"cubin": ["90a"], "ptx": ["90a"]}) is None
    with pytest.raises(ValueError, match="architecture"):
        _backend.code_for((9, 0), {"cubin": ["sm90"], "ptx": []})


def test_backend_reports_the_compiled_architectures():
    cuda = optcore.backend()["cuda"]
    if not cuda["built"]:
        assert "no CUDA module" in cuda["reason"]
        return
    arches = cuda["architectures"]
    assert arches["cubin"], arches
    assert _backend.parse_architectures(arches["cmake"]) == {"cubin": arches["cubin"],
                                                             "ptx": arches["ptx"]}
    for device in cuda["devices"]:
        assert re.fullmatch(r"\d+\.\d+", device["compute_capability"])
        assert device["runnable"] or "no code in this optcore build" in device["reason"]


# ---------------------------------------------------------------- no driver / loader failure

def test_import_without_a_gpu_driver_is_clean(tmp_path):
    code = ("import json, optcore\n"
            "built = True\n"
            "try:\n"
            "    import optcore._cuda\n"
            "except ImportError as exc:\n"
            "    built = False; print('IMPORT', exc)\n"
            "print('JSON', json.dumps(optcore.backend()['cuda']))\n"
            "import numpy as np; w = np.ones(3); optcore.Adam([w]).step([np.ones(3)])\n")
    out = _run(code, env=_hidden_driver_env(tmp_path))
    assert out.returncode == 0, out.stderr
    assert "Traceback" not in out.stderr, out.stderr
    cuda = json.loads(out.stdout.split("JSON ", 1)[1].splitlines()[0])
    assert cuda["usable"] is False and cuda["devices"] == []
    if cuda["built"]:
        assert "IMPORT" not in out.stdout   # the module loads; only using it needs the driver
        assert "no NVIDIA driver" in cuda["reason"] and "libcuda.so.1" in cuda["reason"], cuda
        assert cuda["driver_version"] == 0
    else:
        assert "no CUDA module" in out.stdout and "no CUDA module" in cuda["reason"]


def test_driver_library_check_sees_the_hidden_driver(tmp_path):
    out = _run("from optcore import _backend; print(_backend.driver_library_error())",
               env=_hidden_driver_env(tmp_path))
    assert out.returncode == 0, out.stderr
    assert "libcuda.so.1" in out.stdout and out.stdout.strip() != "None"


def test_cuda_array_without_driver_names_the_cause(tmp_path):
    """A CUDA request on a machine without a driver fails with the reason, not a CUDA code."""
    out = _run("from optcore import _plans\n"
               "try:\n    _plans.require_cuda('params')\n"
               "except RuntimeError as exc:\n    print('ERR', exc)\n",
               env=_hidden_driver_env(tmp_path))
    assert out.returncode == 0, out.stderr
    assert "ERR params:" in out.stdout
    if _cuda_built():
        assert "no NVIDIA driver" in out.stdout
    else:
        assert "no CUDA module" in out.stdout


def test_cuda_module_that_the_loader_refuses_gives_one_clear_error(tmp_path):
    """A damaged install (the extension file is not a loadable library) must not
    surface as the dynamic loader's bare ImportError."""
    copy = tmp_path / "site" / "optcore"
    shutil.copytree(PACKAGE, copy, ignore=shutil.ignore_patterns("__pycache__"))
    for name in os.listdir(copy):
        if name.startswith("_cuda_ext"):
            os.remove(copy / name)
    suffix = [s for s in __import__("importlib.machinery").machinery.EXTENSION_SUFFIXES
              if s.startswith(".cpython")][0]
    (copy / f"_cuda_ext{suffix}").write_bytes(b"\x7fELF damaged" * 64)
    code = ("import optcore, json\n"
            "assert optcore.__file__.startswith(%r), optcore.__file__\n"
            "try:\n    import optcore._cuda\n"
            "except ImportError as exc:\n    print('IMPORT', exc); print('CAUSE', exc.__cause__)\n"
            "print('JSON', json.dumps(optcore.backend()['cuda']))\n") % str(copy)
    out = _run(code, env={"PYTHONPATH": str(tmp_path / "site")})
    assert out.returncode == 0, out.stderr
    line = out.stdout.split("IMPORT ", 1)[1].splitlines()[0]
    assert line.startswith("optcore._cuda: the CUDA module is installed but could not be loaded")
    assert "python -m optcore info" in line
    assert "CAUSE None" in out.stdout   # the loader's exception is folded into the message
    cuda = json.loads(out.stdout.split("JSON ", 1)[1].splitlines()[0])
    assert cuda["built"] is False and "could not be loaded" in cuda["reason"]


@pytest.mark.skipif(not _cuda_built(), reason="the CUDA module is not built")
def test_cuda_module_needs_neither_the_driver_nor_the_cuda_runtime_at_load_time():
    from optcore import _cuda
    path = _cuda._ext.__file__
    readelf = shutil.which("readelf")
    if readelf is None:
        pytest.skip("readelf is not installed")
    needed = re.findall(r"\(NEEDED\)\s+Shared library: \[([^\]]+)\]",
                        subprocess.run([readelf, "-d", path], capture_output=True, text=True).stdout)
    assert needed, "readelf found no NEEDED entries"
    assert not [n for n in needed if n.startswith(("libcuda", "libcudart", "libnvidia"))], needed


def test_cuda_wrapper_without_the_extension_says_so(tmp_path):
    copy = tmp_path / "site" / "optcore"
    shutil.copytree(PACKAGE, copy, ignore=shutil.ignore_patterns("__pycache__", "_cuda_ext*"))
    code = ("try:\n    import optcore._cuda\n"
            "except ImportError as exc:\n    print('IMPORT', exc)\n")
    out = _run(code, env={"PYTHONPATH": str(tmp_path / "site")})
    assert out.returncode == 0, out.stderr
    assert "IMPORT optcore._cuda: this optcore build has no CUDA module" in out.stdout
    assert "The CPU backend works" in out.stdout


# ---------------------------------------------------------------- python -m optcore info

def test_info_prints_the_build():
    out = subprocess.run([sys.executable, "-m", "optcore", "info"], capture_output=True,
                         text=True, timeout=120, cwd=REPO)
    assert out.returncode == 0, out.stderr
    text = out.stdout
    from optcore import _core
    assert text.startswith(f"optcore {optcore.__version__} (")
    assert f"cpu isa: {_core.cpu_isa()} (detected {_core.cpu_isa_detected()}" in text
    assert f"openmp threads: {_core.max_threads()}" in text
    import numpy
    assert f"numpy: {numpy.__version__}" in text
    try:
        import torch
        assert f"torch: {torch.__version__}" in text
    except ImportError:
        assert "torch: not importable" in text
    if _cuda_built():
        from optcore import _cuda
        arches = _backend.parse_architectures(_cuda.compiled_architectures())
        assert "code for " + ", ".join(f"sm_{a}" for a in arches["cubin"]) in text
    else:
        assert "cuda module: not built" in text
    assert re.search(r"^cuda usable: (yes|no \(.+\))$", text, re.M), text


def test_info_json_and_environment_overrides():
    env = dict(os.environ, OMP_NUM_THREADS="1", OPTCORE_CPU_ISA="base")
    out = subprocess.run([sys.executable, "-m", "optcore", "info", "--json"], capture_output=True,
                         text=True, timeout=120, cwd=REPO, env=env)
    assert out.returncode == 0, out.stderr
    info = json.loads(out.stdout)
    assert info["optcore"] == optcore.__version__
    assert info["cpu"]["isa"] == "base" and info["cpu"]["max_threads"] == 1
    assert info["cpu"]["omp_num_threads"] == "1" and info["cpu"]["isa_override"] == "base"
    assert set(info["frameworks"]) == {"numpy", "cupy", "torch"}
    assert info["frameworks"]["numpy"]["importable"] is True
    assert isinstance(info["cuda"]["usable"], bool)
    text = subprocess.run([sys.executable, "-m", "optcore", "info"], capture_output=True,
                          text=True, timeout=120, cwd=REPO, env=env).stdout
    assert "(OMP_NUM_THREADS=1)" in text and "OPTCORE_CPU_ISA=base" in text


def test_info_reports_a_framework_that_fails_to_import(tmp_path):
    fake = tmp_path / "fake"
    (fake / "cupy").mkdir(parents=True)
    (fake / "cupy" / "__init__.py").write_text("raise ImportError('libcudart.so.12: cannot open')\n")
    out = subprocess.run([sys.executable, "-m", "optcore", "info"], capture_output=True, text=True,
                         timeout=120, cwd=REPO,
                         env=dict(os.environ, PYTHONPATH=f"{fake}:{os.environ.get('PYTHONPATH', '')}"))
    assert out.returncode == 0, out.stderr
    assert "cupy: not importable (ImportError: libcudart.so.12: cannot open)" in out.stdout


def test_core_build_info():
    from optcore import _core
    info = _core.build_info()
    assert info["isas_compiled"][0] == "base"
    assert info["compiler"] and isinstance(info["assertions"], bool)
    assert info["openmp"] is None or info["openmp"] >= 201107


# ---------------------------------------------------------------- the release configuration

def test_smoke_test_passes_on_this_install(tmp_path):
    """tools/smoke_test.py (the wheel's test) run against the installed package, from outside
    the source tree, as build_wheel.sh and cibuildwheel run it."""
    script = tmp_path / "smoke_test.py"
    shutil.copy(os.path.join(REPO, "tools", "smoke_test.py"), script)
    out = subprocess.run([sys.executable, str(script)], capture_output=True, text=True,
                         timeout=300, cwd=tmp_path,
                         env=dict(os.environ, OPTCORE_SMOKE_ANY_LOCATION="1"))
    assert out.returncode == 0, out.stdout + out.stderr
    assert out.stdout.rstrip().endswith("smoke test passed")


def test_cibuildwheel_configuration():
    tomllib = pytest.importorskip("tomllib")  # Python >= 3.11
    with open(os.path.join(REPO, "pyproject.toml"), "rb") as f:
        project = tomllib.load(f)
    cibw = project["tool"]["cibuildwheel"]
    assert cibw["build"] == ["cp39-*", "cp310-*", "cp311-*", "cp312-*", "cp313-*"]
    linux = cibw["linux"]
    assert linux["archs"] == ["x86_64", "aarch64"]
    assert linux["manylinux-x86_64-image"] == linux["manylinux-aarch64-image"] == "manylinux_2_28"
    assert linux["environment"]["OPTCORE_CUDA"] == "ON"
    assert linux["environment"]["OPTCORE_CUDA_ARCHITECTURES"] == "release"
    assert "--exclude libcuda.so.1" in linux["repair-wheel-command"]
    for path in cibw["test-sources"]:
        assert os.path.isfile(os.path.join(REPO, path)), path
    assert cibw["test-command"].split()[-1] in cibw["test-sources"]
    assert os.path.isfile(os.path.join(REPO, linux["before-all"].split()[-1]))
    with open(os.path.join(REPO, "CMakeLists.txt")) as f:
        cmake = f.read()
    assert ('set(OPTCORE_RELEASE_CUDA_ARCHITECTURES '
            '"80-real;86-real;89-real;90-real;100")') in cmake
