"""Throughput, model-FLOPs utilisation, the training log (CSV + JSON lines) and the loss plot."""

import csv
import json
import time
from pathlib import Path

import numpy as np

LOG_FIELDS = ("step", "loss", "lr", "loss_scale", "grad_norm", "skipped", "tokens_per_s", "mfu",
              "step_time_s", "tokens")


def measure_matmul_peak(dtype: str = "float32", size: int = 2048, repeats: int = 5) -> float:
    """Best observed FLOP/s of a ``size``³ MindSpore MatMul in graph mode on the current device."""
    import mindspore as ms  # pylint: disable=import-outside-toplevel
    from mindspore import nn, ops  # pylint: disable=import-outside-toplevel

    class _MatMul(nn.Cell):
        def __init__(self):
            super().__init__()
            self.matmul = ops.MatMul()

        def construct(self, a, b):
            return self.matmul(a, b)

    rng = np.random.default_rng(0)
    np_dtype = np.float16 if dtype == "float16" else np.float32
    a = ms.Tensor(rng.standard_normal((size, size)).astype(np_dtype))
    b = ms.Tensor(rng.standard_normal((size, size)).astype(np_dtype))
    cell = _MatMul()
    cell(a, b).asnumpy()  # compile and warm up
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        cell(a, b).asnumpy()
        best = min(best, time.perf_counter() - start)
    return 2.0 * size ** 3 / best


class TrainLog:
    """Rows of :data:`LOG_FIELDS` appended to ``train_log.csv`` and ``train_log.jsonl``.

    Opening with ``resume_step`` keeps only rows with ``step <= resume_step`` (a resumed run
    rewrites the steps after its checkpoint); otherwise existing logs are replaced.
    """

    def __init__(self, directory, resume_step: int = None):
        directory = Path(directory)
        self.csv_path, self.jsonl_path = directory / "train_log.csv", directory / "train_log.jsonl"
        kept = [r for r in read_log(self.jsonl_path) if r["step"] <= resume_step] if resume_step else []
        with open(self.csv_path, "w", newline="", encoding="utf-8") as f:
            writer = csv.DictWriter(f, fieldnames=LOG_FIELDS)
            writer.writeheader()
            writer.writerows(kept)
        with open(self.jsonl_path, "w", encoding="utf-8") as f:
            f.writelines(json.dumps(r) + "\n" for r in kept)

    def write(self, row: dict) -> None:
        row = {k: row[k] for k in LOG_FIELDS}
        with open(self.csv_path, "a", newline="", encoding="utf-8") as f:
            csv.DictWriter(f, fieldnames=LOG_FIELDS).writerow(row)
        with open(self.jsonl_path, "a", encoding="utf-8") as f:
            f.write(json.dumps(row) + "\n")


def read_log(path) -> list:
    """The rows of a ``train_log.jsonl`` (empty when it does not exist)."""
    path = Path(path)
    if not path.is_file():
        return []
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def plot_loss(rows: list, path) -> None:
    """Write the loss curve (and the learning rate on a second axis) of log ``rows`` as a PNG."""
    import matplotlib  # pylint: disable=import-outside-toplevel
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # pylint: disable=import-outside-toplevel

    steps = [r["step"] for r in rows]
    fig, ax = plt.subplots(figsize=(7, 4), dpi=110)
    loss_line, = ax.plot(steps, [r["loss"] for r in rows], color="tab:blue", label="loss")
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.grid(alpha=0.3)
    lr_ax = ax.twinx()
    lr_line, = lr_ax.plot(steps, [r["lr"] for r in rows], color="tab:orange", alpha=0.6,
                          label="learning rate")
    lr_ax.set_ylabel("learning rate")
    ax.legend(handles=[loss_line, lr_line], loc="upper right")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
