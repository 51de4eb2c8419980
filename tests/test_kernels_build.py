"""Building the fused kernels: the build script, the CUDA sources (compiled when nvcc exists),
the Ascend C package staging, the entry points' argument checks, and name consistency between
the Python wiring and the kernel sources."""

import json
import os
import re
import shutil
import subprocess

import numpy as np
import pytest

from codegeex_ms.ops import fused, kernel_build
from codegeex_ms.ops.kernel_build import call_aot
from codegeex_ms.env.paths import REPO_ROOT

KERNELS_DIR = REPO_ROOT / "kernels"


def test_build_script_builds_cpu_and_reports_skipped_ascend(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("ASCEND_")}
    env["CODEGEEX_KERNEL_DIR"] = str(tmp_path / "cache")
    report = tmp_path / "report.json"
    proc = subprocess.run(["bash", str(REPO_ROOT / "run_scripts" / "build_kernels.sh"), "--targets", "CPU", "Ascend",
                           "--json", str(report)], env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    result = json.loads(report.read_text())
    for kernel in kernel_build.KERNELS:
        entry = result[f"CPU/{kernel}"]
        assert entry["status"] == "ready" and entry["path"].startswith(str(tmp_path / "cache"))
    assert result["Ascend/all kernels"]["status"] == "skipped"
    assert "ASCEND_HOME_PATH" in result["Ascend/all kernels"]["reason"]
    assert "Ascend/all kernels   skipped  CANN not found" in proc.stdout


def test_cpu_entry_points_reject_bad_arguments():
    gelu = kernel_build.locate("fast_gelu", "CPU")
    softmax = kernel_build.locate("masked_softmax", "CPU")
    x = np.ones((2, 3), np.float32)
    assert call_aot(gelu, "FastGeluForward", [x, np.empty_like(x)]) == 0
    assert call_aot(gelu, "FastGeluForward", [x, np.empty_like(x), x]) == 1                 # arity
    assert call_aot(gelu, "FastGeluForward", [x, np.empty_like(x)], ["int32", "int32"]) == 2  # dtype
    assert call_aot(gelu, "FastGeluForward", [x, np.empty((7,), np.float32)]) == 3         # shape
    scores = np.zeros((1, 2, 3, 4), np.float32)
    scale = np.ones(1, np.float32)
    good = [scores, np.ones((1, 1, 3, 4), np.float32), scale, np.empty_like(scores)]
    assert call_aot(softmax, "MaskedSoftmaxForward", good) == 0
    np.testing.assert_allclose(good[3], 0.25)   # uniform over 4 keys
    bad_mask = [scores, np.ones((1, 1, 3, 5), np.float32), scale, np.empty_like(scores)]
    assert call_aot(softmax, "MaskedSoftmaxForward", bad_mask) == 3
    half_scale = [scores, good[1], scale.astype(np.float16), np.empty_like(scores)]
    assert call_aot(softmax, "MaskedSoftmaxForward", half_scale) == 2


@pytest.mark.skipif(shutil.which("nvcc") is None and not os.environ.get("CUDA_HOME"), reason="nvcc not found")
def test_cuda_sources_compile_and_check_arguments_without_a_gpu(monkeypatch, tmp_path):
    """nvcc builds both CUDA libraries (one SM version, to keep it quick); their entry points
    validate arguments on the host before any launch, so that part runs without a GPU, and the
    load-time probe tells whether a GPU is usable (never here without nvidia-smi)."""
    monkeypatch.setenv("CODEGEEX_KERNEL_DIR", str(tmp_path))
    monkeypatch.setenv("CODEGEEX_CUDA_ARCHS", "80")
    gelu, softmax = kernel_build.build_cuda("fast_gelu"), kernel_build.build_cuda("masked_softmax")
    x = np.ones((4,), np.float32)
    assert call_aot(gelu, "FastGeluBackward", [x, x]) == 1
    assert call_aot(gelu, "FastGeluForward", [x, x], ["float64", "float64"]) == 2
    scores = np.zeros((1, 1, 2, 2), np.float32)
    assert call_aot(softmax, "MaskedSoftmaxForward", [scores, np.ones((2, 1, 2, 2), np.float32),
                                                      np.ones(1, np.float32), scores]) == 3
    assert call_aot(softmax, "MaskedSoftmaxBackward", [scores, scores.astype(np.float16),
                                                       np.ones(1, np.float32), scores]) == 2
    if shutil.which("nvidia-smi") is None:
        with pytest.raises(kernel_build.KernelUnavailable, match="cannot use a GPU here"):
            kernel_build.probe_cuda(gelu)


def test_ascend_package_is_staged_built_and_activated(monkeypatch, tmp_path):
    """Without CANN the compiler cannot run here: replace the command runner, check what the
    builder hands MindSpore's custom-operator compiler and how it installs the result."""
    cann = tmp_path / "cann"
    cann.mkdir()
    monkeypatch.setenv("ASCEND_HOME_PATH", str(cann))
    monkeypatch.setenv("CODEGEEX_KERNEL_DIR", str(tmp_path / "cache"))
    monkeypatch.delenv("ASCEND_CUSTOM_OPP_PATH", raising=False)
    seen = {}

    def fake_run(cmd, cwd=None, env=None):  # pylint: disable=unused-argument
        args = dict(zip(cmd[2::2], cmd[3::2]))
        seen["args"] = args
        seen["host"] = sorted(os.listdir(args["-o"]))
        seen["kernel"] = sorted(os.listdir(args["-k"]))
        os.makedirs(os.path.join(args["--install_path"], "vendors", "codegeex_ms", "op_impl"))

    monkeypatch.setattr(kernel_build, "_run", fake_run)
    monkeypatch.setattr(kernel_build, "_RESULTS", {})
    vendor = kernel_build.locate("masked_softmax", "Ascend")
    assert vendor.endswith("vendors/codegeex_ms") and os.path.isdir(os.path.join(vendor, "op_impl"))
    assert os.environ["ASCEND_CUSTOM_OPP_PATH"].split(":")[0] == vendor
    assert seen["args"]["--soc_version"] == "ascend910b;ascend910_93"
    assert seen["args"]["--vendor_name"] == "codegeex_ms"
    assert seen["host"] == ["fast_gelu_custom.cpp", "fast_gelu_custom_tiling.h", "masked_softmax_custom.cpp",
                            "masked_softmax_custom_tiling.h"]
    assert seen["kernel"] == ["fast_gelu_common.h", "fast_gelu_custom.cpp", "fast_gelu_grad_custom.cpp",
                              "masked_softmax_common.h", "masked_softmax_custom.cpp",
                              "masked_softmax_grad_custom.cpp"]
    assert fused._func_names("fast_gelu", "Ascend") == ("FastGeluCustom", "FastGeluGradCustom")


def snake(name):
    return re.sub(r"(?<!^)(?=[A-Z])", "_", name).lower()


def test_kernel_sources_define_what_the_python_side_calls():
    """Every Ascend operator name used by ops.Custom is registered (OP_ADD) with a kernel file and
    function of its snake-case name; every CPU/GPU symbol is exported by both backends' sources."""
    host = "".join(p.read_text() for p in KERNELS_DIR.glob("*/ascendc/op_host/*.cpp"))
    registered = set(re.findall(r"OP_ADD\((\w+)\)", host))
    wanted = {name for names in fused.ASCEND_OP_NAMES.values() for name in names}
    assert registered == wanted
    for op in wanted:
        kernel_files = list(KERNELS_DIR.glob(f"*/ascendc/op_kernel/{snake(op)}.cpp"))
        assert len(kernel_files) == 1, op
        assert re.search(rf"__global__ __aicore__ void {snake(op)}\(", kernel_files[0].read_text())
    for kernel, symbols in fused.CPU_GPU_SYMBOLS.items():
        sub = kernel_build.KERNELS[kernel]
        for backend, pattern in (("cpu", "*.cc"), ("cuda", "*.cu")):
            text = "".join(p.read_text() for p in (KERNELS_DIR / sub / backend).glob(pattern))
            for symbol in symbols:
                assert re.search(rf'extern "C" int {symbol}\(', text), (backend, symbol)
