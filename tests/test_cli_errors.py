"""Every entry point fed a bad config, a missing file and a corrupt checkpoint: one ``error: ...``
message naming the input, exit status 2 (see ``codegeex_ms.cli``), no traceback, nothing
left behind.

The matrix runs in-process through ``cli_common.run(main, argv)``, which is exactly what each
module's ``if __name__ == "__main__"`` does; one subprocess per entry point (run concurrently)
checks that wiring, and a generate run checks that MindSpore prints no warning.
"""

import importlib
import os
import subprocess
import sys

import pytest

from codegeex_ms import cli as cli_common
from codegeex_ms.env.paths import REPO_ROOT

SIZES = ("--set", "model.num_layers=1", "--set", "model.hidden_size=32",
         "--set", "model.ffn_hidden_size=64")
ENTRY_POINTS = {  # python -m name -> module defining main
    "convert": "codegeex_ms.convert", "score": "codegeex_ms.score",
    "generate": "codegeex_ms.generate", "train": "codegeex_ms.train.__main__",
    "preprocess": "codegeex_ms.preprocess", "tokenizer_train": "codegeex_ms.tokenizer_train",
    "evaluate": "codegeex_ms.evaluate", "plan": "codegeex_ms.plan",
    "distributed_ckpt": "codegeex_ms.distributed_ckpt", "quantize": "codegeex_ms.quantize",
    "serve": "codegeex_ms.serve.__main__", "dryrun": "codegeex_ms.dryrun",
}
HAVE_CANN = bool(os.environ.get("ASCEND_HOME_PATH"))
BAD_CONFIG = """\
extends: tiny.yaml
model: {hiden_size: 32, num_layers: two}
train: {lr: fast}
"""


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """A tiny checkpoint written by the project (with its manifest), a bit-flipped copy, a
    config with three mistakes and token ids for ``score``."""
    import numpy as np
    from codegeex_ms.checkpoint import save_weights
    from codegeex_ms.config import load_config
    from codegeex_ms.model.build import build_model
    root = tmp_path_factory.mktemp("cli")
    cfg = load_config("ascend_configs/tiny.yaml", tuple(SIZES[1::2]))
    net = build_model(cfg.model)
    good = root / "tiny.ckpt"
    save_weights(good, {n: p.asnumpy() for n, p in net.parameters_and_names()})
    corrupt = root / "corrupt.ckpt"
    data = bytearray(good.read_bytes())
    data[len(data) // 2] ^= 0x01
    corrupt.write_bytes(bytes(data))
    (root / "corrupt.ckpt.manifest.json").write_text(
        (root / "tiny.ckpt.manifest.json").read_text().replace('"tiny.ckpt"', '"corrupt.ckpt"'))
    (root / "bad.yaml").write_text(BAD_CONFIG)
    np.save(root / "ids.npy", np.array([[1, 2, 3]], np.int32))
    (root / "corpus.py").write_text("def f(x):\n    return x + 1\n" * 20)
    return {"root": root, "good": str(good), "corrupt": str(corrupt), "bad": str(root / "bad.yaml"),
            "ids": str(root / "ids.npy"), "corpus": str(root / "corpus.py"),
            "missing": str(root / "no_such_file.ckpt")}


def _cases(f, out):
    """(entry point, argv, substrings the message must contain, paths that must not exist[,
    exit status, default 2])."""
    bad_cfg = ["--config", f["bad"]]
    cfg = ["--config", "tiny", *SIZES]
    ev = ["--output-dir", f"{out}/eval", "--steps", "generate", "--languages", "python",
          "--limit-problems", "1", "--no-progress"]
    config_problems = ["3 problems", "hiden_size", "model.num_layers: expected int", "train.lr"]
    damaged = ["corrupt.ckpt", "sha256 does not match its manifest"]
    return [
        # a config with three mistakes: all reported at once
        ("score", [*bad_cfg, "--checkpoint", f["good"], "--input-ids", f["ids"], "--output",
                   f"{out}/l.npy"], config_problems, ["l.npy"]),
        ("generate", [*bad_cfg, "--checkpoint", f["good"], "--prompt", "x"], config_problems, []),
        ("train", [*bad_cfg, "--set", f"train.output_dir={out}/run"], config_problems, ["run"]),
        ("evaluate", [*ev, *bad_cfg, "--checkpoint", f["good"]], config_problems, ["eval"]),
        ("plan", [*bad_cfg, "--json", f"{out}/plan.json"], config_problems, ["plan.json"]),
        ("distributed_ckpt", ["strategy", *bad_cfg, "--out", f"{out}/s.ckpt"], config_problems,
         ["s.ckpt"]),
        ("quantize", ["--input", f["good"], "--output", f"{out}/q.ckpt", *bad_cfg],
         config_problems, ["q.ckpt"]),
        ("serve", [*bad_cfg, "--checkpoint", f["good"], "--port", "0"], config_problems, []),
        ("dryrun", [*bad_cfg], config_problems if HAVE_CANN else ["CANN"], [],
         2 if HAVE_CANN else 1),  # dryrun refuses without CANN before reading the config
        # a config that does not exist is reported as such
        ("plan", ["--config", "nosuch"], ["--config nosuch: no such file"], []),
        ("generate", ["--config", "nosuch", "--checkpoint", f["good"], "--prompt", "x"],
         ["--config nosuch: no such file"], []),
        # a missing input file
        ("convert", ["--input", f["missing"], "--output", f"{out}/c.ckpt"], ["no_such_file.ckpt"],
         ["c.ckpt"]),
        ("score", [*cfg, "--checkpoint", f["missing"], "--input-ids", f["ids"], "--output",
                   f"{out}/l.npy"], ["no_such_file.ckpt"], ["l.npy"]),
        ("score", [*cfg, "--checkpoint", f["good"], "--input-ids", f"{out}/none.npy", "--output",
                   f"{out}/l.npy"], ["none.npy"], ["l.npy"]),
        ("generate", [*cfg, "--checkpoint", f["missing"], "--prompt", "x"], ["no_such_file.ckpt"], []),
        ("train", [*cfg, "--set", f"data.train_path={out}/nodata", "--set",
                   f"train.output_dir={out}/run"], ["nodata", "does not exist"], ["run"]),
        ("preprocess", [f"{out}/nothing", "-o", f"{out}/shards", "--quiet"], ["nothing"], ["shards"]),
        ("tokenizer_train", [f"{out}/nothing", "-o", f"{out}/tok", "--quiet"], ["nothing"], ["tok"]),
        ("evaluate", [*ev, *cfg, "--checkpoint", f["missing"]], ["no_such_file.ckpt"], ["eval"]),
        ("distributed_ckpt", ["merge", "--src", f"{out}/ranks", "--config", "tiny", "--out",
                              f"{out}/m.ckpt"], ["ranks"], ["m.ckpt"]),
        ("quantize", ["--input", f["missing"], "--output", f"{out}/q.ckpt"], ["no_such_file.ckpt"],
         ["q.ckpt"]),
        ("serve", [*cfg, "--checkpoint", f["missing"], "--port", "0"], ["no_such_file.ckpt"], []),
        # a damaged checkpoint this project wrote: the project says what is wrong
        ("convert", ["--input", f["corrupt"], "--output", f"{out}/c.ckpt"], damaged, ["c.ckpt"]),
        ("score", [*cfg, "--checkpoint", f["corrupt"], "--input-ids", f["ids"], "--output",
                   f"{out}/l.npy"], damaged, ["l.npy"]),
        ("generate", [*cfg, "--checkpoint", f["corrupt"], "--prompt", "x"], damaged, []),
        ("train", [*cfg, "--set", f"data.train_path={f['root']}", "--set",
                   f"train.init_weights={f['corrupt']}", "--set", f"train.output_dir={out}/run"],
         damaged, ["run/checkpoints"]),
        ("evaluate", [*ev, *cfg, "--checkpoint", f["corrupt"]], damaged, ["eval"]),
        ("distributed_ckpt", ["split", "--src", f["corrupt"], "--config", "tiny", *SIZES,
                              "--mp", "1", "--out", f"{out}/split"], damaged, ["split/rank_0"]),
        ("quantize", ["--input", f["corrupt"], "--output", f"{out}/q.ckpt"], damaged, ["q.ckpt"]),
        ("serve", [*cfg, "--checkpoint", f["corrupt"], "--port", "0"], damaged, []),
        # usage errors from argparse have the same format
        ("convert", ["--input", f["good"]], ["--output", "--help"], []),
        ("preprocess", [f["corpus"], "-o", f"{out}/shards", "--seq-length", "many"],
         ["--seq-length", "--help"], ["shards"]),
    ]


def _check(capsys, name, argv, needles, absent, out, expected=cli_common.EXIT_USAGE):
    module = importlib.import_module(ENTRY_POINTS[name])
    status = cli_common.run(module.main, argv)
    err = capsys.readouterr().err
    context = f"{name} {' '.join(argv)}\n{err}"
    assert status == expected, context
    assert "Traceback" not in err, context
    lines = [line for line in err.splitlines() if line.strip()]
    errors = [i for i, line in enumerate(lines) if line.startswith("error: ")]
    assert len(errors) == 1, context  # one message ...
    message = "\n".join(lines[errors[0]:])
    assert all(n in message for n in needles), context  # ... naming the input and the problem
    assert not [p for p in out.rglob(".*") if "part" in p.name or p.name.startswith(".step")], context
    for path in absent:
        assert not (out / path).exists(), f"{context}\n{path} was left behind"


def test_every_entry_point_reports_bad_input_in_one_format(files, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("CODEGEEX_TEST_NO_TOOLCHAINS", "1")
    cases = _cases(files, tmp_path)
    assert {c[0] for c in cases} == set(ENTRY_POINTS)
    for name, argv, needles, absent, *status in cases:
        _check(capsys, name, argv, needles, absent, tmp_path, *status)


def test_debug_shows_the_traceback(files, capsys):
    module = importlib.import_module("codegeex_ms.convert")
    assert cli_common.run(module.main, ["--input", files["missing"], "--output", "x.ckpt",
                                        "--debug"]) == cli_common.EXIT_USAGE
    assert cli_common.run(lambda argv: 1 / 0, ["--debug"]) == cli_common.EXIT_FAILURE
    err = capsys.readouterr().err
    assert "Traceback" in err and "ZeroDivisionError" in err
    assert cli_common.run(lambda argv: 1 / 0, []) == cli_common.EXIT_FAILURE
    err = capsys.readouterr().err
    assert "Traceback" not in err and err.startswith("error: unexpected ZeroDivisionError")


def test_run_time_failures_exit_1(capsys):
    import errno

    def full_disk(argv):
        raise OSError(errno.ENOSPC, "No space left on device", "out.ckpt")
    assert cli_common.run(full_disk, []) == cli_common.EXIT_FAILURE
    assert capsys.readouterr().err == ("error: out.ckpt: No space left on device: free some "
                                       "space and run again\n")


def _env(**extra):
    env = {k: v for k, v in os.environ.items() if k != "GLOG_v"}
    return {**env, "PYTHONPATH": str(REPO_ROOT), **extra}


def test_every_module_entry_point_uses_the_wrapper(tmp_path):
    """``python -m codegeex_ms.<tool>`` with a config or input that does not exist, all at once."""
    procs = {}
    for name in ENTRY_POINTS:
        module = "codegeex_ms.train" if name == "train" else (
            "codegeex_ms.serve" if name == "serve" else ENTRY_POINTS[name])
        out = str(tmp_path / "o")
        ckpt = ["--config", "nosuch", "--checkpoint", "nosuch.ckpt"]
        args = {"convert": ["--input", "nosuch.pt", "--output", out + ".ckpt"],
                "score": [*ckpt, "--input-ids", "x.npy", "--output", out],
                "generate": [*ckpt, "--prompt", "x"], "serve": ckpt,
                "preprocess": ["nosuch_dir", "-o", out],
                "tokenizer_train": ["nosuch_dir", "-o", out],
                "distributed_ckpt": ["strategy", "--config", "nosuch", "--out", out],
                "quantize": ["--input", "nosuch.pt", "--output", out + ".ckpt"],
                "evaluate": ["--output-dir", out, "--steps", "generate", *ckpt],
                }.get(name, ["--config", "nosuch"])
        procs[name] = subprocess.Popen([sys.executable, "-m", module, *args], cwd=tmp_path,
                                       env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                       text=True)
    for name, proc in procs.items():
        _, err = proc.communicate(timeout=300)
        if name == "dryrun" and not HAVE_CANN:
            assert proc.returncode == 1 and err.startswith("error: ") and "CANN" in err, err
            continue
        assert proc.returncode == 2, (name, err)
        assert "Traceback" not in err and err.startswith("error: ") and "nosuch" in err, (name, err)
    assert not list(tmp_path.iterdir())


def test_generate_prints_no_mindspore_warning(files):
    """Even with MindSpore's warnings switched on (GLOG_v=2) a generate run prints none."""
    proc = subprocess.run([sys.executable, "-m", "codegeex_ms.generate", "--config", "tiny", *SIZES,
                           "--checkpoint", files["good"], "--prompt", "def f(x):",
                           "--max-new-tokens", "3", "--temperature", "0"],
                          env=_env(GLOG_v="2"), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    noise = [line for line in proc.stderr.splitlines() if "WARNING" in line or "[ME" in line]
    assert not noise, noise
