"""Per-device memory and model FLOPs of a parallel training config, and inference weight sizes.

    python -m codegeex_ms.plan --config pretrain_13b_1536npu [--set parallel.model_parallel=4] [--json PATH]

The formulas and the reports: ``codegeex_ms.budget.training`` (a parallel training config),
``codegeex_ms.budget.inference`` (``infer_*`` configs), ``codegeex_ms.budget.lora`` (``lora.rank > 0``).
"""

import json
import sys
from pathlib import Path

from codegeex_ms import cli as cli_common
from codegeex_ms.budget.inference import DEVICES, build_inference_plan, format_inference_plan, is_inference_config
from codegeex_ms.budget.lora import format_lora_plan, lora_plan
from codegeex_ms.budget.training import build_plan, format_plan
from codegeex_ms.config import ConfigError, config_from_args


def main(argv=None) -> int:
    parser = cli_common.ArgumentParser(prog="python -m codegeex_ms.plan",
                                       description=__doc__.split("\n\n")[0])
    cli_common.add_config_args(parser, required=True)
    parser.add_argument("--capacity-gib", type=float, default=32.0,
                        help="device memory (default 32: Ascend 910 HBM)")
    parser.add_argument("--reserve-gib", type=float,
                        help="memory kept out of the plan for the runtime, HCCL and fragmentation "
                             "(default 2; for inference on --device cpu 0.4, measured)")
    parser.add_argument("--device", choices=DEVICES, default="npu",
                        help="inference only: the device whose runtime reserve is the default (npu)")
    parser.add_argument("--json", help="also write the plan as JSON to this path")
    parser.add_argument("--inference", action="store_true",
                        help="plan inference on one device (weights, KV cache, workspace, the largest "
                             "batch × length); the default for configs named infer_*")
    args = parser.parse_args(argv)
    try:
        cfg = config_from_args(args)
        if args.inference or is_inference_config(args.config):
            plan = build_inference_plan(cfg, args.capacity_gib, args.reserve_gib, args.device)
            report = format_inference_plan
        else:
            lora = cfg.lora.rank > 0  # frozen base + adapters on one device: codegeex_ms.budget.lora
            reserve = 2.0 if args.reserve_gib is None else args.reserve_gib
            plan = (lora_plan if lora else build_plan)(cfg, args.capacity_gib, reserve)
            report = format_lora_plan if lora else format_plan
    except (ConfigError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(report(plan, args.config))
    if args.json:
        Path(args.json).write_text(json.dumps(plan, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(cli_common.run(main))
