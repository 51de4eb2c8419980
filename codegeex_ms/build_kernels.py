"""CLI behind ``run_scripts/build_kernels.sh``: build the fused kernels this machine can build.

One line per target and kernel: ``ready`` (with the library / package path), ``skipped`` (the
target's tools are missing: no nvcc, no CANN) or ``FAILED`` (the tools ran and the build broke,
followed by the compiler output). A GPU library that compiled but finds no usable GPU here is
``ready`` with a note. Exit status 1 only when something FAILED.
"""

import argparse
import json
import sys
from pathlib import Path

from codegeex_ms.ops import kernel_build

MISSING_TOOL_MARKERS = ("not found", "is unset", "is missing")


def _build(kernel: str, target: str) -> dict:
    if target == "CPU":
        return {"status": "ready", "path": str(kernel_build.build_cpu(kernel))}
    if target == "Ascend":
        return {"status": "ready", "path": str(kernel_build.build_ascend())}
    lib = kernel_build.build_cuda(kernel)
    entry = {"status": "ready", "path": str(lib)}
    try:
        kernel_build.probe_cuda(lib)
    except kernel_build.KernelUnavailable as err:
        entry["note"] = f"compiled; not usable on this machine: {err}"
    return entry


def build_all(targets) -> dict:
    """{"<target>/<kernel>": {"status": ready|skipped|FAILED, "path" or "reason"[, "note"]}}."""
    report = {}
    for target in targets:
        # The Ascend package holds every kernel: one entry for all of them.
        kernels = ["fast_gelu"] if target == "Ascend" else list(kernel_build.KERNELS)
        if target == "CPU":
            kernels += list(kernel_build.CPU_ONLY_KERNELS)
        for kernel in kernels:
            name = "Ascend/all kernels" if target == "Ascend" else f"{target}/{kernel}"
            try:
                report[name] = _build(kernel, target)
            except kernel_build.KernelUnavailable as err:
                missing = any(m in str(err).splitlines()[0] for m in MISSING_TOOL_MARKERS)
                report[name] = {"status": "skipped" if missing else "FAILED", "reason": str(err)}
    return report


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        description="Build the fused kernels (FastGELU, masked softmax) into the kernel cache "
                    f"({kernel_build.cache_dir()}; override with $CODEGEEX_KERNEL_DIR): CPU always, "
                    "GPU when nvcc is present, Ascend when CANN is set up. The package also builds "
                    "a missing kernel on first use.")
    parser.add_argument("--targets", nargs="+", choices=kernel_build.TARGETS, default=list(kernel_build.TARGETS),
                        help="device targets to build for (default: all)")
    parser.add_argument("--json", metavar="PATH", help="also write the report as JSON")
    args = parser.parse_args(argv)
    report = build_all(args.targets)
    for name, entry in report.items():
        detail = entry.get("path") or entry["reason"].splitlines()[0]
        print(f"{name:20s} {entry['status']:8s} {detail}")
        if "note" in entry:
            print(f"{'':29s}({entry['note']})")
        if entry["status"] == "FAILED":
            print(entry["reason"])
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2), encoding="utf-8")
    return 1 if any(e["status"] == "FAILED" for e in report.values()) else 0


if __name__ == "__main__":
    sys.exit(main())
