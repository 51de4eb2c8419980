"""``python -m codegeex_ms.dryrun``: without CANN it must refuse in one line (exit 1, no traceback);
the parts that do not need CANN (the simulated rank's environment, reading MindSpore's memory
summary, the report) are checked directly."""

import os
import subprocess
import sys

import pytest

from codegeex_ms import cli as cli_common
from codegeex_ms import dryrun
from codegeex_ms.env.paths import REPO_ROOT


def run_cli(args, env, timeout=300):
    return subprocess.run([sys.executable, "-m", "codegeex_ms.dryrun", *args], cwd=REPO_ROOT, env=env,
                          capture_output=True, text=True, timeout=timeout, check=False)


def env_without_cann():
    env = {k: v for k, v in os.environ.items() if not k.startswith("ASCEND_")}
    env["LD_LIBRARY_PATH"] = ""
    env["GLOG_v"] = "3"
    return env


def assert_one_line_error(proc, *fragments):
    assert proc.returncode == 1, proc.stdout + proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
    assert "Traceback" not in proc.stdout + proc.stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    return lines[0]


def test_refuses_without_cann_in_one_line():
    proc = run_cli(["--config", "pretrain_13b_1536npu"], env_without_cann())
    assert_one_line_error(proc, "needs CANN", "libge_runner.so", "$ASCEND_HOME_PATH is unset", "set_env.sh")
    assert proc.stdout == ""


def test_cann_installed_but_not_sourced_is_named(tmp_path):
    lib = tmp_path / "cann" / "lib64"
    lib.mkdir(parents=True)
    (lib / "libge_runner.so").write_bytes(b"")
    env = env_without_cann()
    env["ASCEND_HOME_PATH"] = str(tmp_path / "cann")
    proc = run_cli(["--config", "pretrain_13b_1536npu"], env)
    assert_one_line_error(proc, str(lib / "libge_runner.so"), "not on $LD_LIBRARY_PATH", "set_env.sh")


def test_a_failing_simulated_rank_is_reported_in_one_line(tmp_path):
    """A libge_runner.so that is not CANN passes the check; MindSpore then cannot load its Ascend
    backend in the child, and the parent reports the child's error line and where its log is."""
    lib = tmp_path / "cann" / "lib64"
    lib.mkdir(parents=True)
    (lib / "libge_runner.so").write_bytes(b"")
    env = env_without_cann()
    env.update(ASCEND_HOME_PATH=str(tmp_path / "cann"), LD_LIBRARY_PATH=str(lib))
    log = tmp_path / "rank0.log"
    proc = run_cli(["--config", "smoke_8npu", "--log", str(log)], env)
    line = assert_one_line_error(proc, "simulated compile of rank 0 failed", "Ascend", str(log))
    assert "libge_runner.so" in log.read_text()   # MindSpore's own load error is kept in the log
    assert len(line) < 600


def test_help_explains_the_simulation():
    proc = run_cli(["--help"], env_without_cann())
    assert proc.returncode == 0
    text = " ".join(proc.stdout.split())
    for fragment in ("MS_SIMULATION_LEVEL", "RANK_SIZE", "RANK_ID", "Needs CANN", "--rank", "--level"):
        assert fragment in text, fragment


def test_simulation_env_makes_the_child_one_rank_of_the_job():
    base = {"PATH": "/bin", "MS_ROLE": "MS_WORKER", "RANK_TABLE_FILE": "x.json", "GLOG_v": "3"}
    env = dryrun.simulation_env(base, rank=5, world=1536, level=1)
    assert env["RANK_SIZE"] == "1536" and env["RANK_ID"] == "5" and env["MS_SIMULATION_LEVEL"] == "1"
    assert env["GLOG_v"] == "1" and env["PATH"] == "/bin"
    assert "MS_ROLE" not in env and "RANK_TABLE_FILE" not in env   # would start real networking
    assert base["GLOG_v"] == "3"                                     # the parent's env is untouched


SUMMARY = """[INFO] PRE_ACT(1,2,python):... Device MOC memory size: 32768M
[INFO] PRE_ACT(1,2,python):... MindSpore Used memory size: 30720M
[INFO] PRE_ACT(1,2,python):... MindSpore memory base address: 0xffffe9dc1407
[INFO] PRE_ACT(1,2,python):... Used peak memory usage (without fragments): 23716M
[INFO] PRE_ACT(1,2,python):... Actual peak memory usage (with fragments): 26244M
[INFO] PRE_ACT(1,2,python):... Used peak memory usage (without fragments): 1024M
"""


def test_memory_summary_is_read_from_the_log():
    memory = dryrun.parse_memory(SUMMARY.splitlines())
    assert memory == {"device_mib": 32768, "available_mib": 30720, "peak_mib": 23716,
                      "peak_with_fragments_mib": 26244}     # the larger of two graphs' peaks
    assert dryrun.parse_memory(["Used peak memory usage: 12M", "nothing"]) == {}


def test_report_puts_compiler_and_plan_side_by_side():
    gib = 1 << 30
    plan = {"chosen": "recompute", "capacity": 32 * gib,
            "memory": {"recompute": {"total": 28 * gib}, "no_recompute": {"total": 180 * gib}}}
    memory = dryrun.parse_memory(SUMMARY.splitlines())
    text = dryrun.format_report("pretrain_13b_1536npu", 0, 1536, 1, memory, plan)
    rows = {line[:44].strip(): line[44:].strip() for line in text.splitlines()[2:7]}
    assert rows["compiler: peak, without fragments"] == f"{23716 / 1024:.2f}"
    assert rows["compiler: peak, with fragments"] == f"{26244 / 1024:.2f}"
    assert rows["plan: total (recompute, incl. reserve)"] == "28.00"
    assert rows["plan: device capacity"] == "32.00"
    assert "rank 0 of 1536" in text and "fits the plan's capacity" in text
    assert f"plan / compiler = {28 * 1024 / 26244:.2f}" in text


@pytest.mark.parametrize("argv", [["--config", "pretrain_13b_1536npu", "--rank", "1536"],
                                  ["--config", "no_such_config"]])
def test_bad_arguments_are_rejected_before_simulating(monkeypatch, capsys, tmp_path, argv):
    monkeypatch.setattr(dryrun, "find_cann", lambda: tmp_path / "libge_runner.so")
    monkeypatch.setattr(dryrun, "_run_child", lambda *a: pytest.fail("must not simulate"))
    assert cli_common.run(dryrun.main, argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and len(err.strip().splitlines()) == 1


def test_a_simulated_rank_counts_as_launched_distributed(monkeypatch):
    """DryRun sets neither MS_ROLE nor RANK_TABLE_FILE: the simulated rank must still take the
    distributed path (else it would stop with "1536 devices but 1 process")."""
    from codegeex_ms.train.distributed import launched_distributed
    for key in ("MS_ROLE", "RANK_TABLE_FILE", "MS_SIMULATION_LEVEL", "RANK_SIZE"):
        monkeypatch.delenv(key, raising=False)
    assert not launched_distributed()
    monkeypatch.setenv("MS_SIMULATION_LEVEL", "1")
    assert not launched_distributed()          # a simulation level alone is not a job
    monkeypatch.setenv("RANK_SIZE", "1536")
    assert launched_distributed()
