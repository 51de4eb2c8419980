"""The cross-device reductions the semi-auto step relies on, with real processes and CPU collectives.

``msrun`` starts 4 workers (tests/msrun_reduction_worker.py) as a 2 × 2 (dp × mp) mesh; each holds
its optimizer-side slices of the same gradients (model-parallel split, parallel-optimizer cut,
replicated tensors) and computes the global gradient norm and the overflow decision with
AllReduce(SUM) over all ranks and, in two stages, over groups made with ``create_group``. Checked
against one process holding the whole gradients (NumPy, float64). One msrun job computes two
cases: all finite, and one inf planted in rank 3's slice. ~30-60 s on two cores.

Tolerance: each worker rounds its local square sum to FP32 before the AllReduce (relative 6e-8);
the four-term sum adds a few more roundings: 1e-6 relative.
"""

import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

from codegeex_ms.env.paths import REPO_ROOT
from msrun_reduction_worker import full_gradients
from test_train_distributed import free_port


@pytest.fixture(scope="module")
def rows(tmp_path_factory):
    return run_workers(tmp_path_factory.mktemp("msrun"))


def run_workers(tmp_path):
    if shutil.which("msrun", path=os.path.dirname(sys.executable)) is None:
        if os.environ.get("CI") == "true":
            pytest.fail(f"msrun not found next to {sys.executable}")
        pytest.skip(f"msrun not found next to {sys.executable}")
    out = tmp_path / "out"
    out.mkdir()
    logs = tmp_path / "logs"
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "GLOG_v": "3",
           "PATH": os.path.dirname(sys.executable) + os.pathsep + os.environ.get("PATH", "")}
    job = subprocess.run(
        ["msrun", "--worker_num=4", "--local_worker_num=4", f"--master_port={free_port()}",
         f"--log_dir={logs}", "--join=True",
         str(REPO_ROOT / "tests" / "msrun_reduction_worker.py"), str(out)],
        env=env, cwd=tmp_path, capture_output=True, text=True, timeout=300, check=False)
    worker_logs = "".join(p.read_text()[-1500:] for p in sorted(logs.glob("worker_*.log"))) if logs.is_dir() else ""
    assert job.returncode == 0, job.stdout[-2000:] + job.stderr[-2000:] + worker_logs
    rows = [json.loads((out / f"rank_{r}.json").read_text()) for r in range(4)]
    assert [r["rank"] for r in rows] == [0, 1, 2, 3]
    return rows


def test_global_norm_over_groups_equals_one_process(rows):
    want = float(np.sqrt(sum(np.sum(g.astype(np.float64) ** 2) for g in full_gradients().values())))
    for row in rows:
        r = row["clean"]
        assert r["norm_world"] == pytest.approx(want, rel=1e-6)
        assert r["norm_groups"] == pytest.approx(want, rel=1e-6)
        # without the replica correction the replicated tensors are counted several times
        assert r["norm_naive"] > want * (1 + 1e-3)
        assert r["local_finite"] and r["finite_world"] and r["finite_groups"]


def test_one_overflowing_slice_is_one_decision_for_all(rows):
    planted = [row["planted"] for row in rows]
    assert [r["local_finite"] for r in planted] == [True, True, True, False]
    assert not any(r["finite_world"] or r["finite_groups"] for r in planted)
