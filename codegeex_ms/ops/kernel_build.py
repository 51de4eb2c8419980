"""Build and locate the fused-kernel libraries (``kernels/``) for each MindSpore device target.

- CPU: ``kernels/<kernel>/cpu/*.cc`` → one ``.so`` per kernel, built with g++ (std::thread,
  ``-march=native`` on x86-64 / ``-mcpu=native`` on AArch64).
- GPU: ``kernels/<kernel>/cuda/*.cu`` → one ``.so`` per kernel, built with nvcc.
- Ascend: ``kernels/<kernel>/ascendc/{op_host,op_kernel}`` of all kernels → one custom operator
  package (vendor ``codegeex_ms``) built and installed with MindSpore's CANN custom-operator
  compiler; the operators are then called by name.

Outputs go to a per-user cache, ``$CODEGEEX_KERNEL_DIR`` or ``~/.cache/codegeex_ms/kernels``,
under a name that hashes the sources, the compiler command and the host CPU, so an edited source
or another machine gets a fresh build and concurrent processes share one (a file lock serialises
builds). ``locate`` builds on first use; failures raise ``KernelUnavailable`` with the reason.
``python -m codegeex_ms.build_kernels`` (``run_scripts/build_kernels.sh``) builds ahead of time.
"""

import ctypes
import fcntl
import hashlib
import os
import platform
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from codegeex_ms.env.paths import REPO_ROOT

KERNEL_SOURCE_DIR = REPO_ROOT / "kernels"
KERNELS = {"fast_gelu": "fast_gelu", "masked_softmax": "softmax"}
"""Kernel name → its directory under ``kernels/``."""
CPU_ONLY_KERNELS = {"w8a16_matmul": "w8a16", "stateless_dropout": "dropout", "layernorm": "layernorm",
                    "cross_entropy": "cross_entropy"}
"""Kernels with a CPU library only (no CUDA / Ascend C sources), e.g. the inference-only W8A16
matmul, the stateless dropout of CPU training, the FP32 LayerNorm and cross-entropy; ``locate`` reports them unavailable on the
other targets."""
TARGETS = ("CPU", "GPU", "Ascend")
ASCEND_VENDOR = "codegeex_ms"
BUILD_TIMEOUT_S = 1800


class KernelUnavailable(RuntimeError):
    """A fused kernel cannot be used on this machine; the message says why."""


def cache_dir() -> Path:
    """Root of built kernels: ``$CODEGEEX_KERNEL_DIR`` or ``$XDG_CACHE_HOME|~/.cache``/codegeex_ms/kernels."""
    env = os.environ.get("CODEGEEX_KERNEL_DIR")
    if env:
        return Path(env).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "codegeex_ms" / "kernels"


def _sources(kernel: str, sub: str, suffixes) -> list:
    """Source files of ``kernel`` under ``sub`` (plus the shared ``kernels/common/<sub>``)."""
    directory = {**KERNELS, **CPU_ONLY_KERNELS}.get(kernel)
    if directory is None:
        raise ValueError(f"unknown kernel {kernel!r}; expected one of {sorted(KERNELS) + sorted(CPU_ONLY_KERNELS)}")
    dirs = [KERNEL_SOURCE_DIR / directory / sub, KERNEL_SOURCE_DIR / "common" / sub]
    files = sorted(p for d in dirs if d.is_dir() for p in d.rglob("*") if p.suffix in suffixes)
    if not files:
        raise KernelUnavailable(f"no {sub} sources for {kernel} under {KERNEL_SOURCE_DIR}")
    return files


def _digest(parts, files) -> str:
    h = hashlib.sha256()
    for part in parts:
        h.update(str(part).encode() + b"\0")
    for f in files:
        h.update(str(f.relative_to(KERNEL_SOURCE_DIR)).encode() + b"\0" + f.read_bytes())
    return h.hexdigest()[:16]


def _run(cmd, cwd=None, env=None) -> None:
    """Run a build command; raise KernelUnavailable with its output's tail on failure."""
    try:
        proc = subprocess.run(cmd, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              text=True, timeout=BUILD_TIMEOUT_S, check=False)
    except (OSError, subprocess.TimeoutExpired) as err:
        raise KernelUnavailable(f"{cmd[0]} failed to run: {err}") from err
    if proc.returncode != 0:
        tail = "\n".join(proc.stdout.strip().splitlines()[-25:])
        raise KernelUnavailable(f"build command failed ({' '.join(map(str, cmd))}):\n{tail}")


def _build_once(out: Path, build) -> Path:
    """Produce ``out`` with ``build(tmp_path)`` unless it exists; safe across processes."""
    if out.exists():
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out.parent / f".{out.name}.lock", "w", encoding="utf-8") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not out.exists():
            tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
            try:
                built = build(tmp)
                os.replace(built, out)
            finally:
                shutil.rmtree(tmp, ignore_errors=True)
    return out


# ---------------------------------------------------------------------------------------- CPU

def _cpu_identity() -> str:
    """Model name and ISA flags of this CPU (part of the cache key because of -march=native)."""
    try:
        text = Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace")
    except OSError:
        return platform.processor()
    keep = [line for line in text.splitlines()[:60]
            if line.split(":")[0].strip() in ("model name", "flags", "Features", "CPU part")]
    return "\n".join(keep)


def _tool_version(tool: str) -> str:
    try:
        return subprocess.run([tool, "--version"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              text=True, timeout=60, check=False).stdout
    except OSError:
        return ""


def cpu_command(kernel: str) -> list:
    """g++ command (sources last, no ``-o``) for the CPU library of ``kernel``; honours $CXX and
    $CODEGEEX_KERNEL_CXXFLAGS (replaces the ``-march=native`` default, e.g. ``-march=x86-64-v3``
    for a library that other x86-64 machines can load)."""
    arch = {"x86_64": ["-march=native"], "aarch64": ["-mcpu=native"]}.get(platform.machine(), [])
    extra = os.environ.get("CODEGEEX_KERNEL_CXXFLAGS")
    flags = ["-std=c++17", "-O3", "-fPIC", "-shared", "-pthread", "-fopenmp-simd", "-ffp-contract=off",
             "-fno-math-errno"] + (extra.split() if extra is not None else arch)
    return [os.environ.get("CXX", "g++"), *flags, f"-I{KERNEL_SOURCE_DIR / 'common' / 'cpu'}",
            *map(str, _sources(kernel, "cpu", {".cc"}))]


def build_cpu(kernel: str) -> Path:
    cmd = cpu_command(kernel)
    if shutil.which(cmd[0]) is None:
        raise KernelUnavailable(f"C++ compiler {cmd[0]!r} not found (set $CXX)")
    flags = [c for c in cmd if c.startswith("-") and not c.startswith("-I")]
    key = _digest([flags, _tool_version(cmd[0]), _cpu_identity()], _sources(kernel, "cpu", {".cc", ".h"}))

    def build(tmp: Path) -> Path:
        lib = tmp / f"{kernel}.so"
        _run(cmd + ["-o", str(lib)])
        return lib

    return _build_once(cache_dir() / f"{kernel}-cpu-{key}.so", build)


# ---------------------------------------------------------------------------------------- GPU

DEFAULT_CUDA_ARCHS = ("70", "75", "80", "86", "89", "90")


def _nvcc() -> str:
    found = shutil.which("nvcc")
    if found:
        return found
    home = os.environ.get("CUDA_HOME") or os.environ.get("CUDA_PATH") or "/usr/local/cuda"
    candidate = Path(home) / "bin" / "nvcc"
    if candidate.exists():
        return str(candidate)
    raise KernelUnavailable("nvcc not found (install the CUDA toolkit or set $CUDA_HOME)")


def _local_gpu_archs() -> list:
    """SM versions of the GPUs nvidia-smi reports here (``"9.0"`` → ``"90"``), or []."""
    if shutil.which("nvidia-smi") is None:
        return []
    proc = subprocess.run(["nvidia-smi", "--query-gpu=compute_cap", "--format=csv,noheader"],
                          stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, timeout=60, check=False)
    caps = {line.strip().replace(".", "") for line in proc.stdout.splitlines() if line.strip()}
    return sorted(c for c in caps if c.isdigit()) if proc.returncode == 0 else []


def cuda_archs(nvcc: str) -> list:
    """SM versions to build: $CODEGEEX_CUDA_ARCHS (``"80;90"``), else those of the local GPUs,
    else the defaults that nvcc supports."""
    env = os.environ.get("CODEGEEX_CUDA_ARCHS")
    if env:
        return [a.strip() for a in env.replace(",", ";").split(";") if a.strip()]
    proc = subprocess.run([nvcc, "--list-gpu-arch"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          text=True, timeout=60, check=False)
    supported = {line.strip().replace("compute_", "") for line in proc.stdout.splitlines()}
    archs = [a for a in (_local_gpu_archs() or DEFAULT_CUDA_ARCHS) if a in supported]
    if not archs:
        raise KernelUnavailable(f"{nvcc} supports none of the SM versions {DEFAULT_CUDA_ARCHS}")
    return archs


def cuda_command(kernel: str, nvcc: str) -> list:
    """nvcc command (without ``-o``) for the GPU library of ``kernel`` (static cudart)."""
    archs = cuda_archs(nvcc)
    gencode = [f"-gencode=arch=compute_{a},code=sm_{a}" for a in archs]
    gencode.append(f"-gencode=arch=compute_{archs[-1]},code=compute_{archs[-1]}")  # PTX for newer GPUs
    cu_files = _sources(kernel, "cuda", {".cu"})
    return [nvcc, "-O3", "-std=c++17", "--shared", "-Xcompiler", "-fPIC", *gencode,
            f"-I{KERNEL_SOURCE_DIR / 'common' / 'cuda'}", *map(str, cu_files)]


def build_cuda(kernel: str) -> Path:
    nvcc = _nvcc()
    cmd = cuda_command(kernel, nvcc)
    flags = [c for c in cmd if c.startswith("-") and not c.startswith("-I")]
    key = _digest([flags, _tool_version(nvcc)], _sources(kernel, "cuda", {".cu", ".cuh", ".h"}))

    def build(tmp: Path) -> Path:
        lib = tmp / f"{kernel}.so"
        _run(cmd + ["-o", str(lib)])
        return lib

    return _build_once(cache_dir() / f"{kernel}-cuda-{key}.so", build)


def probe_cuda(lib: Path) -> None:
    """Raise KernelUnavailable unless ``lib``'s CUDA runtime finds a usable GPU."""
    code = ctypes.CDLL(str(lib)).CodegeexCudaProbe()
    if code != 0:
        raise KernelUnavailable(f"{lib.name} cannot use a GPU here (cudaError {code}; 100: no device, "
                                "35: no NVIDIA driver or one older than the CUDA runtime it was built with)")


# ------------------------------------------------------------------------------------- Ascend

def _ascend_compiler() -> Path:
    """MindSpore's CANN custom-operator compiler script (ships with the mindspore wheel)."""
    import mindspore  # pylint: disable=import-outside-toplevel
    script = Path(mindspore.__file__).parent / "lib" / "plugin" / "ascend" / "custom_compiler" / "setup.py"
    if not script.exists():
        raise KernelUnavailable(f"MindSpore's Ascend custom-operator compiler is missing ({script})")
    return script


ASCEND_KERNEL_SOCS = ("ascend910b", "ascend910_93")
"""SoCs the Ascend C kernels are written for: Atlas A2 (910B) and A3 (910C). Their GM <-> UB copies
use ``DataCopyPad``, which Ascend 910 (910A, ``ascend910``) does not have, so the operator
definitions register only these (``AddConfig``) and ``fused.py`` falls back to the built-in
operators on any other SoC."""


def ascend_soc() -> str:
    """SoC list for the package: $CODEGEEX_ASCEND_SOC or ``ASCEND_KERNEL_SOCS`` (``;``-separated)."""
    return os.environ.get("CODEGEEX_ASCEND_SOC", ";".join(ASCEND_KERNEL_SOCS))


def ascend_socs() -> tuple:
    """The SoCs the package is built for and whose kernels can therefore run: ``ascend_soc()``
    restricted to ``ASCEND_KERNEL_SOCS`` (the operator definitions register no others)."""
    wanted = [s.strip() for s in ascend_soc().split(";") if s.strip()]
    return tuple(s for s in wanted if s in ASCEND_KERNEL_SOCS)


def _cann_home() -> Path:
    home = os.environ.get("ASCEND_HOME_PATH") or os.environ.get("ASCEND_TOOLKIT_HOME")
    if not home or not Path(home).is_dir():
        raise KernelUnavailable("CANN not found: $ASCEND_HOME_PATH is unset (source CANN's set_env.sh)")
    return Path(home)


def build_ascend() -> Path:
    """Build and install the Ascend C package of all kernels; returns its vendor directory."""
    cann = _cann_home()
    script = _ascend_compiler()
    files = [f for k in KERNELS for f in _sources(k, "ascendc", {".cpp", ".h"})]
    key = _digest([ascend_soc(), cann.resolve()], files)

    def build(tmp: Path) -> Path:
        for part in ("op_host", "op_kernel"):
            (tmp / part).mkdir()
            for sub in KERNELS.values():
                for f in (KERNEL_SOURCE_DIR / sub / "ascendc" / part).glob("*"):
                    shutil.copy(f, tmp / part / f.name)
        install = tmp / "opp"
        install.mkdir()
        _run([sys.executable, str(script), "-o", str(tmp / "op_host"), "-k", str(tmp / "op_kernel"),
              "--soc_version", ascend_soc(), "--ascend_cann_package_path", str(cann),
              "--vendor_name", ASCEND_VENDOR, "--install_path", str(install)], cwd=tmp)
        return install

    root = _build_once(cache_dir() / f"ascend-{key}", build)
    return root / "vendors" / ASCEND_VENDOR


def activate_ascend_package(vendor_dir: Path) -> None:
    """Put the package on ``$ASCEND_CUSTOM_OPP_PATH`` (read when the first custom op is loaded)."""
    current = [p for p in os.environ.get("ASCEND_CUSTOM_OPP_PATH", "").split(":") if p]
    if str(vendor_dir) not in current:
        os.environ["ASCEND_CUSTOM_OPP_PATH"] = ":".join([str(vendor_dir), *current])


# ---------------------------------------------------------------------------- direct calls

def call_aot(lib, symbol: str, arrays, dtypes=None) -> int:
    """Call aot entry point ``symbol`` of library ``lib`` on NumPy arrays (inputs then outputs,
    C-contiguous), as MindSpore would: ``int f(nparam, params, ndims, shapes, dtypes, stream,
    extra)``. ``dtypes`` overrides the dtype names passed. Returns the kernel's status code. For
    tests and benchmarks of the CPU kernels without the framework around them."""
    fn = getattr(ctypes.CDLL(str(lib)), symbol)
    n = len(arrays)
    params = (ctypes.c_void_p * n)(*[a.ctypes.data for a in arrays])
    ndims = (ctypes.c_int * n)(*[a.ndim for a in arrays])
    dims = [(ctypes.c_int64 * max(a.ndim, 1))(*a.shape) for a in arrays]
    shapes = (ctypes.POINTER(ctypes.c_int64) * n)(*[ctypes.cast(d, ctypes.POINTER(ctypes.c_int64)) for d in dims])
    names = dtypes or [a.dtype.name for a in arrays]
    types = (ctypes.c_char_p * n)(*[t.encode() for t in names])
    return fn(n, params, ndims, shapes, types, None, None)


# ------------------------------------------------------------------------------------ locate

_RESULTS = {}


def locate(kernel: str, target: str) -> str:
    """What ``ops.Custom`` needs for ``kernel`` on ``target``: ``"/path/lib.so"`` (CPU, GPU) or the
    installed package's vendor directory (Ascend). Builds on first use; the outcome (path or
    ``KernelUnavailable``) is remembered for the rest of the process."""
    if target not in TARGETS:
        raise KernelUnavailable(f"no fused kernels for device target {target!r}")
    if kernel in CPU_ONLY_KERNELS and target != "CPU":
        raise KernelUnavailable(f"the {kernel} kernel exists for CPU only, not for {target}")
    if kernel not in KERNELS and kernel not in CPU_ONLY_KERNELS:
        raise ValueError(f"unknown kernel {kernel!r}; expected one of {sorted(KERNELS) + sorted(CPU_ONLY_KERNELS)}")
    key = (kernel, target)
    if key not in _RESULTS:
        try:
            if target == "CPU":
                _RESULTS[key] = str(build_cpu(kernel))
            elif target == "GPU":
                lib = build_cuda(kernel)
                probe_cuda(lib)
                _RESULTS[key] = str(lib)
            else:
                vendor = build_ascend()
                activate_ascend_package(vendor)
                _RESULTS[key] = str(vendor)
        except KernelUnavailable as err:
            _RESULTS[key] = err
    result = _RESULTS[key]
    if isinstance(result, KernelUnavailable):
        raise result
    return result


def manifest() -> dict:
    """Which libraries this process located or failed to locate (for logs and benchmarks)."""
    return {f"{k}/{t}": (v if isinstance(v, str) else f"unavailable: {v}") for (k, t), v in _RESULTS.items()}
