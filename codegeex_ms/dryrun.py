"""Compile one rank's training graph of a distributed config on this host with MindSpore's DryRun.

    python -m codegeex_ms.dryrun --config pretrain_13b_1536npu [--rank 0] [--level 1] [--set k=v]

MindSpore's DryRun (``MS_SIMULATION_LEVEL``; ``mindspore.utils.dryrun``) mocks every device-side
interface of the Ascend backend: with ``RANK_SIZE`` = the config's device count and ``RANK_ID`` =
the rank, ``init()`` pretends to be that rank of the full job, the semi-auto-parallel compiler
builds exactly the graph that rank would run (sharded operators, inserted collectives, optimizer
sharding, recompute), and at level 1 the memory allocator reports the device-memory peak the
graph needs. No NPU is used, but the Ascend backend is: CANN (``libge_runner.so``, found through
``$ASCEND_HOME_PATH`` / ``$LD_LIBRARY_PATH`` after ``source set_env.sh``) must be installed.

The simulation runs in a child process (the environment must be set before MindSpore is
imported), which builds the trainer exactly as ``python -m codegeex_ms.train`` does and runs one
optimizer step on a synthetic batch of the right shapes (no data needed). Its log (``GLOG_v=1``)
is kept in ``--log`` and scanned for the allocator's summary lines, printed beside the memory
``codegeex_ms.plan`` predicts for the same config. Units: MindSpore prints MiB ("M"); shown in GiB.
"""

import argparse
import importlib.util
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

from codegeex_ms import cli as cli_common
from codegeex_ms.config import ConfigError, config_from_args

GIB_MIB = 1024
CANN_LIBRARY = "libge_runner.so"
# The allocator's summary at MS_SIMULATION_LEVEL >= 1 (MindSpore's DryRun tutorial, "MS_SIMULATION_LEVEL=1").
MEMORY_LINES = {
    "device_mib": re.compile(r"Device MOC memory size: (\d+)M"),
    "available_mib": re.compile(r"MindSpore Used memory size: (\d+)M"),
    "peak_mib": re.compile(r"Used peak memory usage \(without fragments\): (\d+)M"),
    "peak_with_fragments_mib": re.compile(r"Actual peak memory usage \(with fragments\): (\d+)M"),
}


class DryRunUnavailable(RuntimeError):
    """This host cannot run MindSpore's DryRun; the message says what is missing."""


# --------------------------------------------------------------------------- prerequisites

def _cann_dirs() -> list:
    """Where an installed CANN keeps its libraries: ``lib64`` of ``$ASCEND_HOME_PATH`` /
    ``$ASCEND_TOOLKIT_HOME`` (the variables CANN's set_env.sh exports)."""
    homes = [os.environ.get(var) for var in ("ASCEND_HOME_PATH", "ASCEND_TOOLKIT_HOME")]
    return [Path(home) / "lib64" for home in homes if home]


def find_cann() -> Path:
    """Path of CANN's ``libge_runner.so`` (what MindSpore's Ascend backend loads) on
    ``$LD_LIBRARY_PATH``, else ``DryRunUnavailable`` saying what to install or source."""
    loadable = [Path(p) for p in os.environ.get("LD_LIBRARY_PATH", "").split(":") if p]
    for directory in loadable:
        if (directory / CANN_LIBRARY).is_file():
            return directory / CANN_LIBRARY
    installed = [d / CANN_LIBRARY for d in _cann_dirs() if (d / CANN_LIBRARY).is_file()]
    if installed:
        raise DryRunUnavailable(f"CANN's {installed[0]} is not on $LD_LIBRARY_PATH, so MindSpore's Ascend "
                                "backend cannot load it: `source <CANN>/set_env.sh` first")
    home = os.environ.get("ASCEND_HOME_PATH")
    where = f"$ASCEND_HOME_PATH={home}" if home else "$ASCEND_HOME_PATH is unset"
    raise DryRunUnavailable(
        f"the dry run compiles with MindSpore's Ascend backend and needs CANN, but {CANN_LIBRARY} was "
        f"not found ({where}; searched its lib64 and $LD_LIBRARY_PATH): install the CANN toolkit and "
        f"`source <CANN>/set_env.sh` (no NPU is needed)")


def find_ascend_plugin() -> Path:
    """MindSpore's Ascend backend plugin (``lib/plugin/libmindspore_ascend.so*``), located
    without importing MindSpore; ``DryRunUnavailable`` when this install has none."""
    spec = importlib.util.find_spec("mindspore")
    if spec is None or spec.origin is None:
        raise DryRunUnavailable("MindSpore is not installed in this Python environment")
    plugins = sorted((Path(spec.origin).parent / "lib" / "plugin").glob("libmindspore_ascend.so*"))
    if not plugins:
        raise DryRunUnavailable(f"this MindSpore install ({Path(spec.origin).parent}) has no Ascend backend "
                                "(lib/plugin/libmindspore_ascend.so); install the Ascend build of MindSpore 2.9")
    return plugins[0]


# ----------------------------------------------------------------------------- simulation

def simulation_env(base: dict, rank: int, world: int, level: int) -> dict:
    """``base`` plus what makes the child rank ``rank`` of a simulated ``world``-device job at
    ``MS_SIMULATION_LEVEL=level``, logging at INFO to stderr (the memory summary is INFO)."""
    env = {k: v for k, v in base.items() if k not in ("MS_ROLE", "RANK_TABLE_FILE", "MINDSPORE_HCCL_CONFIG_PATH")}
    env.update({"MS_SIMULATION_LEVEL": str(level), "RANK_SIZE": str(world), "RANK_ID": str(rank),
                "GLOG_v": "1", "GLOG_logtostderr": "1"})
    return env


def parse_memory(lines) -> dict:
    """The allocator's summary values (MiB) found in ``lines``; the largest of each when several
    graphs report. Keys of ``MEMORY_LINES`` that never appear are absent."""
    found = {}
    for line in lines:
        for key, pattern in MEMORY_LINES.items():
            match = pattern.search(line)
            if match:
                found[key] = max(found.get(key, 0), int(match.group(1)))
    return found


ERROR_LINE = re.compile(r"^(\w+\.)*\w*(Error|Exception)\b.*:|^\[(ERROR|CRITICAL)\]")


def _run_child(argv: list, env: dict, log_path: Path) -> tuple:
    """Run the simulated rank, teeing its output into ``log_path`` and scanning it as it comes
    (the INFO log of a 13B compile is large: nothing is held in memory). ``(returncode,
    memory, the first error line or else the last non-empty line)``."""
    cmd = [sys.executable, "-m", "codegeex_ms.dryrun", *argv, "--simulated-rank"]
    memory, first_error, last = {}, "", ""
    with open(log_path, "w", encoding="utf-8") as log, \
            subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                             errors="replace") as proc:
        for line in proc.stdout:
            log.write(line)
            memory.update({k: max(v, memory.get(k, 0)) for k, v in parse_memory([line]).items()})
            if line.strip():
                last = line.strip()
                if not first_error and ERROR_LINE.search(last):
                    first_error = last
    return proc.returncode, memory, first_error or last


def _synthetic_batch(cfg, rows: int) -> tuple:
    """One micro-batch of ``rows`` samples with the training columns' shapes and dtypes."""
    import numpy as np  # pylint: disable=import-outside-toplevel
    from codegeex_ms.data.pretrain_dataset import pretrain_columns  # pylint: disable=import-outside-toplevel
    rng = np.random.default_rng(cfg.train.seed)
    tokens = rng.integers(0, cfg.model.real_vocab_size, size=(rows, cfg.train.seq_length + 1))
    return pretrain_columns(tokens, cfg.model.eod_token_id, cfg.data.eod_reset)


def simulated_rank(cfg) -> None:
    """Child side: build this rank's trainer on the simulated Ascend backend and run one step."""
    from codegeex_ms.env.runtime import setup  # pylint: disable=import-outside-toplevel
    setup("graph", "Ascend", seed=cfg.train.seed)
    import mindspore as ms  # pylint: disable=import-outside-toplevel
    from codegeex_ms.train.distributed import init_topology  # pylint: disable=import-outside-toplevel
    from codegeex_ms.train.loop import Trainer  # pylint: disable=import-outside-toplevel
    topology = init_topology(cfg, "Ascend")
    trainer = Trainer(cfg, topology, "Ascend")
    rows = topology.batch_per_rank or cfg.train.micro_batch_size
    batch = tuple(ms.Tensor(c) for c in _synthetic_batch(cfg, rows))
    for _ in range(cfg.train.grad_accumulation - 1):
        trainer.step.accumulate(batch)
    trainer.step.update(batch)
    print(f"codegeex_ms.dryrun: rank {topology.rank} of {topology.world} compiled and ran one simulated step",
          flush=True)


# ------------------------------------------------------------------------------------ report

def format_report(title: str, rank: int, world: int, level: int, memory: dict, plan: dict) -> str:
    """The compiler's memory figures beside the plan's, in GiB."""
    chosen = plan["memory"][plan["chosen"]]
    rows = [f"MindSpore DryRun: {title}, rank {rank} of {world}, MS_SIMULATION_LEVEL={level}",
            f"{'':44s}{'GiB':>8s}"]

    def row(label, mib):
        rows.append(f"  {label:42s}{mib / GIB_MIB:8.2f}" if mib is not None else f"  {label:42s}{'-':>8s}")

    row("compiler: peak, without fragments", memory.get("peak_mib"))
    row("compiler: peak, with fragments", memory.get("peak_with_fragments_mib"))
    row("compiler: device memory MindSpore may use", memory.get("available_mib"))
    row(f"plan: total ({plan['chosen'].replace('_', ' ')}, incl. reserve)", chosen["total"] / (1 << 20))
    row("plan: device capacity", plan["capacity"] / (1 << 20))
    if "peak_with_fragments_mib" in memory:
        fits = memory["peak_with_fragments_mib"] * (1 << 20) <= plan["capacity"]
        rows.append(f"  compiler's peak {'fits' if fits else 'DOES NOT FIT'} the plan's capacity; "
                    f"plan / compiler = {chosen['total'] / (memory['peak_with_fragments_mib'] << 20):.2f}")
    elif level == 0:
        rows.append("  (level 0 compiles only: no memory statistics; use --level 1)")
    return "\n".join(rows)


def build_parser() -> argparse.ArgumentParser:
    parser = cli_common.ArgumentParser(
        prog="python -m codegeex_ms.dryrun",
        description="Compile one rank's training graph of a distributed config (e.g. the 1536-device "
                    "pretrain_13b_1536npu) on this host with MindSpore's DryRun (MS_SIMULATION_LEVEL, "
                    "RANK_SIZE, RANK_ID; no NPU used) and print the compiler's device-memory peak beside "
                    "`codegeex_ms.plan`'s figure. Needs CANN and the Ascend build of MindSpore 2.9; "
                    "without them it stops with an error saying what is missing (exit 1).",
        epilog="Example: source /usr/local/Ascend/ascend-toolkit/set_env.sh && python -m codegeex_ms.dryrun "
               "--config pretrain_13b_1536npu --json dryrun.json")
    cli_common.add_config_args(parser, required=True)
    parser.add_argument("--rank", type=int, default=0, help="which rank of the job to compile (default 0)")
    parser.add_argument("--level", type=int, choices=(0, 1), default=1,
                        help="MS_SIMULATION_LEVEL: 0 compiles only, 1 (default) also counts operator "
                             "input/output memory and reports the peak")
    parser.add_argument("--log", help="where to keep the simulated rank's INFO log "
                                      "(default: a dryrun_rank<R>.log in a new temporary directory)")
    parser.add_argument("--capacity-gib", type=float, default=32.0,
                        help="device memory for the plan's verdict (default 32: Ascend 910)")
    parser.add_argument("--reserve-gib", type=float, default=2.0, help="the plan's runtime reserve")
    parser.add_argument("--json", help="also write the figures as JSON to this path")
    parser.add_argument("--simulated-rank", action="store_true", help=argparse.SUPPRESS)
    return parser


def _child_argv(args) -> list:
    argv = ["--config", args.config]
    for item in args.overrides:
        argv += ["--set", item]
    return argv


def run(args) -> int:
    """Parent side: check prerequisites, plan, simulate, report. Exit status."""
    import json  # pylint: disable=import-outside-toplevel
    find_cann()
    find_ascend_plugin()
    cfg = config_from_args(args)
    par = cfg.parallel
    world = par.data_parallel * par.model_parallel * par.pipeline_stages
    if not 0 <= args.rank < world:
        raise ConfigError(f"--rank {args.rank} is outside the job's {world} devices")
    from codegeex_ms.budget.training import build_plan  # pylint: disable=import-outside-toplevel
    plan = build_plan(cfg, args.capacity_gib, args.reserve_gib)
    log_path = Path(args.log) if args.log else Path(tempfile.mkdtemp(prefix="codegeex_dryrun_")) / \
        f"dryrun_rank{args.rank}.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="codegeex_dryrun_out_") as out:
        argv = _child_argv(args) + ["--set", f"train.output_dir={out}"]
        env = simulation_env(dict(os.environ), args.rank, world, args.level)
        code, memory, last = _run_child(argv, env, log_path)
    if code != 0:
        print(f"error: the simulated compile of rank {args.rank} failed (exit {code}): {last[:300]} "
              f"(full log: {log_path})", file=sys.stderr)
        return 1
    if args.level >= 1 and "peak_mib" not in memory:
        print(f"error: the simulated rank finished but its log has no memory summary (MindSpore's "
              f"'Used peak memory usage' line); see {log_path}", file=sys.stderr)
        return 1
    print(format_report(args.config, args.rank, world, args.level, memory, plan))
    print(f"log: {log_path}")
    if args.json:
        Path(args.json).write_text(json.dumps({
            "config": args.config, "rank": args.rank, "world": world, "level": args.level,
            "compiler_mib": memory, "plan_total_bytes": plan["memory"][plan["chosen"]]["total"],
            "plan_capacity_bytes": plan["capacity"], "log": str(log_path)}, indent=2))
    return 0


def main(argv=None) -> int:
    """Exit status; raises what ``cli_common.run`` reports (``DryRunUnavailable``: exit 1,
    config errors: exit 2)."""
    args = build_parser().parse_args(argv)
    if args.simulated_rank:
        simulated_rank(config_from_args(args))
        return 0
    return run(args)


if __name__ == "__main__":
    sys.exit(cli_common.run(main))
