"""Process-wide MindSpore settings shared by every entry point.

MindSpore's log level is set here and only here: importing :mod:`codegeex_ms` (which imports
this module) sets ``GLOG_v`` to :data:`DEFAULT_GLOG_V` (errors only) unless the user already set
it, before anything imports MindSpore, whose Python and C++ loggers read it once at import.
``GLOG_v=2`` (warnings) or ``GLOG_v=1`` (info) in the environment overrides it. This module does
not import MindSpore itself until :func:`setup` is called.
"""

import argparse
import os

DEFAULT_GLOG_V = "3"
os.environ.setdefault("GLOG_v", DEFAULT_GLOG_V)

MODES = ("graph", "pynative")


def add_runtime_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--mode", choices=MODES, default="graph",
                        help="MindSpore execution mode (graph compiles once per input shape and is "
                             "the fast path; pynative runs op by op, with only the decode step "
                             "compiled: less memory, the mode for the 13B model on a CPU)")
    parser.add_argument("--device-target", default=None, choices=["CPU", "GPU", "Ascend"],
                        help="device to run on (default: MindSpore's choice for this install)")


def setup(mode: str = "graph", device_target: str = None, seed: int = None) -> None:
    """Set the execution mode ("graph" or "pynative"), device and (optionally) the global seed."""
    import mindspore as ms  # pylint: disable=import-outside-toplevel
    ms.set_context(mode={"graph": ms.GRAPH_MODE, "pynative": ms.PYNATIVE_MODE}[mode])
    if device_target and ms.get_context("device_target") != device_target:
        # set_device refuses once a kernel has run, even to name the device already in use
        ms.set_device(device_target)
    if mode == "pynative" and ms.get_context("device_target") == "CPU":
        # each operator runs on the calling thread: no hand-off to a launch thread per operator,
        # which on a busy CPU machine waits for a time slice (measured: a bias add 8 ms -> 0.5 ms)
        ms.runtime.launch_blocking()
    if seed is not None:
        ms.set_seed(seed)
