"""Kernel selection by Ascend SoC: the Ascend C kernels exist for 910B/910C only, so on any other
SoC ``auto`` must pick the built-in operators (one-line notice) and ``on`` must name the SoC and
the supported ones. There is no Ascend device here: the device target and the SoC are faked, and
the CANN build is replaced by a stub that installs an empty package (as in test_kernels_build)."""

import logging
import os
import re

import numpy as np
import pytest

import mindspore as ms
from mindspore import ops

from codegeex_ms.ops import FastGelu, MaskedSoftmax, fused, kernel_build, soc
from codegeex_ms.env.paths import REPO_ROOT


@pytest.fixture(autouse=True)
def fake_ascend(monkeypatch, tmp_path):
    """Device target Ascend; CANN present but its compiler stubbed; no cached build results."""
    monkeypatch.setattr(fused, "_device_target", lambda: "Ascend")
    monkeypatch.setattr(fused, "_NOTICES", set())
    monkeypatch.setattr(kernel_build, "_RESULTS", {})
    cann = tmp_path / "cann"
    cann.mkdir()
    monkeypatch.setenv("ASCEND_HOME_PATH", str(cann))
    monkeypatch.setenv("CODEGEEX_KERNEL_DIR", str(tmp_path / "cache"))
    monkeypatch.delenv("CODEGEEX_ASCEND_SOC", raising=False)
    monkeypatch.delenv("ASCEND_CUSTOM_OPP_PATH", raising=False)
    builds = []

    def fake_run(cmd, cwd=None, env=None):  # pylint: disable=unused-argument
        args = dict(zip(cmd[2::2], cmd[3::2]))
        builds.append(args["--soc_version"])
        os.makedirs(os.path.join(args["--install_path"], "vendors", "codegeex_ms", "op_impl"))

    monkeypatch.setattr(kernel_build, "_run", fake_run)
    ms.set_context(mode=ms.PYNATIVE_MODE)
    return builds


def fake_soc(monkeypatch, name):
    monkeypatch.setattr(soc, "ascend_soc_version", lambda: name)


@pytest.mark.parametrize("chip, family", [
    ("Ascend910A", "ascend910"), ("Ascend910ProB", "ascend910"), ("Ascend910PremiumA", "ascend910"),
    ("Ascend910B3", "ascend910b"), ("Ascend910_9391", "ascend910_93"), ("Ascend310P3", "ascend310p"),
    ("ascend910b", "ascend910b"), ("ascend910", "ascend910"), ("Ascend910_9579", "ascend950"),
])
def test_chip_names_map_to_soc_families(chip, family):
    assert soc.soc_family(chip) == family


def test_mindspore_soc_is_preferred_over_acl(monkeypatch):
    monkeypatch.setattr(soc, "_acl_soc", lambda: "Ascend910B2")
    monkeypatch.setattr(soc, "_mindspore_soc", lambda: "ascend910")
    assert soc.ascend_soc_version() == "ascend910"
    monkeypatch.setattr(soc, "_mindspore_soc", lambda: "")
    assert soc.ascend_soc_version() == "ascend910b"
    monkeypatch.setattr(soc, "_acl_soc", lambda: "")
    assert soc.ascend_soc_version() == ""


@pytest.mark.parametrize("name", ["ascend910", "ascend310p", ""])
def test_auto_falls_back_on_unsupported_soc_with_one_line_notice(monkeypatch, caplog, fake_ascend, name):
    fake_soc(monkeypatch, name)
    with caplog.at_level(logging.WARNING, logger="codegeex_ms"):
        gelus = [FastGelu(fused="auto") for _ in range(2)]
        softmax = MaskedSoftmax(0.5, fused="auto")
    assert not any(g.is_fused for g in gelus) and not softmax.is_fused
    assert isinstance(gelus[0].fast_gelu, ops.FastGeLU)
    assert fake_ascend == []                        # no package build attempted for this SoC
    notices = [r.getMessage() for r in caplog.records]
    assert len(notices) == 2                        # one per kernel, not one per cell
    for kernel, notice in zip(("fast_gelu", "masked_softmax"), notices):
        assert "\n" not in notice and f"fused {kernel} kernel unavailable on Ascend" in notice
        assert f"SoC is {soc.describe(name)}" in notice
        assert "ascend910b" in notice and "ascend910_93" in notice and "using built-in operators" in notice
    # the fallback computes FastGELU (x * sigmoid(1.702 x)); float64 reference, FP32 tolerance
    x = np.linspace(-6, 6, 25).astype(np.float32)
    ref = x / (1 + np.exp(-1.702 * x.astype(np.float64)))
    np.testing.assert_allclose(gelus[0](ms.Tensor(x)).asnumpy(), ref, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", ["ascend910b", "ascend910_93"])
def test_auto_uses_fused_kernels_on_supported_soc(monkeypatch, caplog, fake_ascend, name):
    fake_soc(monkeypatch, name)
    with caplog.at_level(logging.WARNING, logger="codegeex_ms"):
        gelu, softmax = FastGelu(fused="auto"), MaskedSoftmax(0.5, fused="auto")
    assert gelu.is_fused and softmax.is_fused and not caplog.records
    assert fake_ascend == ["ascend910b;ascend910_93"]   # one package for both kernels
    vendor = os.environ["ASCEND_CUSTOM_OPP_PATH"].split(":")[0]
    assert vendor.endswith(os.path.join("vendors", "codegeex_ms"))


def test_on_names_the_soc_and_the_supported_list(monkeypatch):
    fake_soc(monkeypatch, "ascend910")
    with pytest.raises(RuntimeError) as err:
        MaskedSoftmax(0.5, fused="on")
    first = str(err.value).splitlines()[0]
    assert "fused masked_softmax kernel requested (fused='on') but unavailable on Ascend" in first
    assert "SoC is ascend910 (Ascend 910 / 910A" in first
    assert "support ascend910b (Ascend 910B, Atlas A2), ascend910_93 (Ascend 910C, Atlas A3)" in first
    assert "model.fused_kernels" in str(err.value)


def test_package_soc_list_limits_what_counts_as_supported(monkeypatch, fake_ascend):
    """$CODEGEEX_ASCEND_SOC narrows the package; a SoC the sources do not register (ascend910)
    never counts as supported even when requested."""
    monkeypatch.setenv("CODEGEEX_ASCEND_SOC", "ascend910_93;ascend910")
    assert kernel_build.ascend_socs() == ("ascend910_93",)
    fake_soc(monkeypatch, "ascend910b")
    assert not FastGelu(fused="auto").is_fused
    fake_soc(monkeypatch, "ascend910")
    with pytest.raises(RuntimeError, match="SoC is ascend910 .*support ascend910_93 "):
        FastGelu(fused="on")
    assert fake_ascend == []


def test_operator_definitions_register_exactly_the_supported_socs():
    """The Python list of supported SoCs is the one every Ascend C operator definition registers
    (AddConfig); the kernels copy with DataCopyPad, which only those SoCs have."""
    hosts = sorted((REPO_ROOT / "kernels").glob("*/ascendc/op_host/*.cpp"))
    assert len(hosts) >= 2
    for host in hosts:
        text = host.read_text()
        for definition in re.findall(r"AICore\(\)[^;]*;", text):
            assert tuple(re.findall(r'AddConfig\("(\w+)"\)', definition)) == kernel_build.ASCEND_KERNEL_SOCS, host
    kernels = "".join(p.read_text() for p in (REPO_ROOT / "kernels").glob("*/ascendc/op_kernel/*"))
    assert "DataCopyPad" in kernels and "ascend910" not in kernel_build.ASCEND_KERNEL_SOCS
