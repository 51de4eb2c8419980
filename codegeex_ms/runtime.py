"""Process-wide MindSpore settings shared by every entry point."""

import argparse

import mindspore as ms

MODES = {"graph": ms.GRAPH_MODE, "pynative": ms.PYNATIVE_MODE}


def add_runtime_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--mode", choices=sorted(MODES), default="graph",
                        help="MindSpore execution mode (graph compiles once per input shape and is "
                             "the fast path; pynative runs op by op)")
    parser.add_argument("--device-target", default=None, choices=["CPU", "GPU", "Ascend"],
                        help="device to run on (default: MindSpore's choice for this install)")


def setup(mode: str = "graph", device_target: str = None, seed: int = None) -> None:
    """Set the execution mode, device and (optionally) the global seed."""
    ms.set_context(mode=MODES[mode])
    if device_target:
        ms.set_device(device_target)
    if seed is not None:
        ms.set_seed(seed)
