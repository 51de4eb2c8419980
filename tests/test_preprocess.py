"""Preprocessing end to end: a slice of this machine's standard library and crafted bad inputs."""

import gzip
import json
import os
import subprocess
import sys
import sysconfig
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from codegeex_ms.data import pipeline
from codegeex_ms.data.filters import FilterConfig, filter_reason
from codegeex_ms.data.mindrecord_io import MANIFEST, STAGING_MARKER, staging_dir
from codegeex_ms.data.pipeline import NoUsableInput, PreprocessOptions, preprocess
from codegeex_ms.preprocess import main
from codegeex_ms.tokenizer_train import train_tokenizer

pytest.importorskip("mindspore")
from mindspore.mindrecord import FileReader  # noqa: E402

STDLIB = Path(sysconfig.get_paths()["stdlib"])
SUBSET = [STDLIB / "json", STDLIB / "email"]  # a few dozen files, most between 1 and 100 KB
SEQ = 128
TAGS = {"python": "# language: Python", "javascript": "// language: JavaScript"}


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    missing = [str(p) for p in SUBSET if not p.is_dir()]
    if missing:
        pytest.skip(f"standard library directories missing: {missing}")
    root = tmp_path_factory.mktemp("pre")
    tags = root / "tags.json"
    tags.write_text(json.dumps(TAGS))
    texts = [p.read_text("utf-8") for d in SUBSET for p in sorted(d.rglob("*.py"))]
    tok = train_tokenizer(texts, 400, root / "tok")
    return {"root": root, "tags": tags, "tok": tok}


def options(env, inputs, output, **kw):
    kw = {"seq_length": SEQ, "workers": 0, "progress": False, "samples_per_shard": 40,
          "shuffle_buffer": 16, **kw}
    return PreprocessOptions(inputs=inputs, output=output, tokenizer_dir=str(env["tok"].source),
                             language_tags=str(env["tags"]), **kw)


def read_stream(output):
    """All stored samples of an output directory, in shard order: int32 [N, SEQ + 1]."""
    manifest = json.loads((output / MANIFEST).read_text())
    rows = []
    for shard in manifest["shards"]:
        reader = FileReader(str(output / shard["file"]))
        rows += [r["input_ids"] for r in reader.get_next()]
        reader.close()
    return np.stack(rows), manifest


def expected_stdlib_documents():
    """Independent expectation: readable UTF-8 .py files passing the filters, first copy of each
    text, as tagged documents; plus the number of files of any kind."""
    docs, seen, n_files = [], set(), 0
    for top in SUBSET:
        for dirpath, _, names in os.walk(top):
            n_files += len(names)
            for name in names:
                if not name.endswith(".py"):
                    continue
                data = (Path(dirpath) / name).read_bytes()
                try:
                    text = data.decode("utf-8")
                except UnicodeDecodeError:
                    continue
                if b"\0" not in data and filter_reason(text, FilterConfig()) is None and text not in seen:
                    seen.add(text)
                    docs.append("# language: Python\n" + text)
    return docs, n_files


@pytest.fixture(scope="module")
def stdlib_run(env):
    output = env["root"] / "stdlib"
    summary = preprocess(options(env, SUBSET, output, workers=2, seed=7))
    return output, summary


def test_stdlib_shards_account_for_every_kept_token(env, stdlib_run):
    output, summary = stdlib_run
    tok = env["tok"]
    samples, manifest = read_stream(output)
    docs, n_files = expected_stdlib_documents()
    assert len(docs) >= 20
    assert summary["files_seen"] == n_files and summary["files_kept"] == len(docs)
    assert summary["files_seen"] == summary["files_kept"] + sum(summary["dropped"].values())
    assert samples.shape == (manifest["num_samples"], SEQ + 1) == (summary["samples_written"], SEQ + 1)
    assert manifest["num_samples"] >= 2 and len(manifest["shards"]) >= 2
    stream = samples.reshape(-1)
    padding = summary["padding_tokens"]
    assert 0 <= padding < SEQ + 1 and (stream[len(stream) - padding:] == tok.eod_id).all()
    stream = stream[:len(stream) - padding]
    assert stream[-1] == tok.eod_id
    expected_tokens = sum(len(ids) + 1 for ids in tok.encode_batch(docs, allow_special=False))
    assert len(stream) == expected_tokens == summary["tokens_total"] == summary["tokens_per_language"]["Python"]
    ends = np.flatnonzero(stream == tok.eod_id)
    pieces = np.split(stream, ends + 1)[:-1]
    decoded = tok.decode_batch([p[:-1] for p in pieces])
    assert Counter(decoded) == Counter(docs)  # every kept document exactly once, EOD between them
    assert tok.decode(samples[0]).startswith("# language: Python\n")


def test_stdlib_output_is_deterministic_across_worker_counts(env, stdlib_run):
    output, summary = stdlib_run
    again = env["root"] / "stdlib_inproc"
    assert preprocess(options(env, SUBSET, again, workers=0, seed=7)) == summary
    a, ma = read_stream(output)
    b, mb = read_stream(again)
    np.testing.assert_array_equal(a, b)
    assert [s["sha256"] for s in ma["shards"]] == [s["sha256"] for s in mb["shards"]]
    other = env["root"] / "stdlib_seed8"
    preprocess(options(env, SUBSET, other, workers=0, seed=8))
    c, _ = read_stream(other)
    assert c.shape == a.shape and not np.array_equal(c, a)  # same documents, another order
    assert Counter(c.reshape(-1).tolist()) == Counter(a.reshape(-1).tolist())


def test_stdlib_shards_feed_the_training_dataset(env, stdlib_run):
    from codegeex_ms.data.pretrain_dataset import create_pretrain_dataset

    output, summary = stdlib_run
    ds = create_pretrain_dataset(output, SEQ, 2, eod_id=env["tok"].eod_id, shuffle=False)
    assert ds.get_dataset_size() == summary["samples_written"] // 2
    batch = next(ds.create_dict_iterator(output_numpy=True, num_epochs=1))
    assert env["tok"].decode(batch["input_ids"][0]).startswith("# language: Python\n")


def code(name, lines=60):
    return "".join(f"def {name}_{i}(alpha, beta):\n    return alpha + beta * {i}\n" for i in range(lines))


@pytest.fixture()
def messy(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    good = code("good")
    (src / "good.py").write_text(good)
    (src / "copy.py").write_text(good)
    (src / "small.py").write_text("x = 1\n")
    (src / "bin.py").write_bytes(good.encode() + b"\0")
    (src / "latin.py").write_bytes(("# caf\xe9\n" + good).encode("latin-1"))
    (src / "notes.txt").write_text(good)
    os.symlink(src / "nowhere", src / "broken.py")
    records = [{"code": code("js").replace("def", "function"), "path": "lib/a.js"},
               {"code": "s = '<|endoftext|>'\n" + code("lit"), "language": "Python"},
               {"code": good, "language": "python"}]
    jsonl = tmp_path / "data.jsonl.gz"
    with gzip.open(jsonl, "wt") as f:
        f.write("\n".join(json.dumps(r) for r in records) + "\n{bad json\n")
    return [src, jsonl]


def test_bad_inputs_are_counted_not_fatal(env, messy, tmp_path):
    summary = preprocess(options(env, messy, tmp_path / "out", workers=0))
    assert summary["files_seen"] == 11 and summary["files_kept"] == 3
    assert summary["dropped"] == {"unreadable": 1, "binary": 1, "not_utf8": 1, "bad_record": 1,
                                  "unknown_language": 1, "too_small": 1, "duplicate": 2}
    assert summary["documents_per_language"] == {"Python": 2, "JavaScript": 1}
    assert any("broken.py" in o for o in summary["dropped_examples"]["unreadable"])
    samples, _ = read_stream(tmp_path / "out")
    eod = env["tok"].eod_id
    # the literal <|endoftext|> is text: EODs are exactly the 3 separators plus padding
    assert (samples.reshape(-1) == eod).sum() == 3 + summary["padding_tokens"]
    assert "<|endoftext|>'" in env["tok"].decode(samples.reshape(-1))
    assert json.loads((tmp_path / "out" / "summary.json").read_text()) == summary


def test_interrupted_run_leaves_nothing_and_reruns(env, messy, tmp_path, monkeypatch):
    out = tmp_path / "out"
    real_write = pipeline.ShardWriter.write

    def failing_write(self, sample):
        if self.samples_written == 3:
            raise KeyboardInterrupt
        real_write(self, sample)

    monkeypatch.setattr(pipeline.ShardWriter, "write", failing_write)
    with pytest.raises(KeyboardInterrupt):
        preprocess(options(env, messy, out, samples_per_shard=2))
    assert not out.exists() and not staging_dir(out).exists()
    monkeypatch.undo()
    # a hard kill leaves the staging directory behind: the next run clears it
    staging_dir(out).mkdir()
    (staging_dir(out) / STAGING_MARKER).touch()
    (staging_dir(out) / "pretrain-00000.mindrecord").write_bytes(b"half")
    summary = preprocess(options(env, messy, out, samples_per_shard=2))
    assert not staging_dir(out).exists()
    names = sorted(p.name for p in out.iterdir())
    shards = [n for n in names if n.endswith(".mindrecord")]
    assert len(shards) == (summary["samples_written"] + 1) // 2 >= 2
    assert set(names) == set(shards) | {n + ".db" for n in shards} | {"manifest.json", "summary.json"}
    samples, _ = read_stream(out)
    assert len(samples) == summary["samples_written"]


def test_output_protection(env, messy, tmp_path):
    out = tmp_path / "out"
    preprocess(options(env, messy, out))
    with pytest.raises(FileExistsError, match="--overwrite"):
        preprocess(options(env, messy, out))
    assert preprocess(options(env, messy, out, overwrite=True))["files_kept"] == 3
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "keep.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="not a preprocessing output"):
        preprocess(options(env, messy, foreign, overwrite=True))
    assert (foreign / "keep.txt").read_text() == "mine"
    staging_dir(tmp_path / "new").mkdir()
    with pytest.raises(FileExistsError, match="not made by preprocessing"):
        preprocess(options(env, messy, tmp_path / "new"))


def test_nothing_usable_is_a_clear_error(env, tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    (src / "tiny.py").write_text("x = 1\n")
    (src / "img.png").write_bytes(b"\x89PNG\0\0")
    out = tmp_path / "out"
    with pytest.raises(NoUsableInput, match=r"2 files seen; dropped .*too_small: 1"):
        preprocess(options(env, [src], out))
    assert not out.exists() and not staging_dir(out).exists()


def test_cli(env, messy, tmp_path, capsys):
    args = [str(p) for p in messy] + ["-o", str(tmp_path / "out"), "--tokenizer",
                                      str(env["tok"].source), "--language-tags", str(env["tags"]),
                                      "--seq-length", "64", "--workers", "0", "--quiet",
                                      "--min-bytes", "2", "--min-alpha-fraction", "0.1", "--summary-json", str(tmp_path / "s.json")]
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert "files seen      11" in printed and "Python" in printed and "samples written" in printed
    summary = json.loads((tmp_path / "s.json").read_text())
    assert summary["files_kept"] == 4 and "too_small" not in summary["dropped"]  # thresholds lowered
    assert main(args) == 2 and "--overwrite" in capsys.readouterr().err
    assert main([str(tmp_path / "absent"), "-o", str(tmp_path / "o2")]) == 2
    assert "absent does not exist" in capsys.readouterr().err
    help_text = subprocess.run([sys.executable, "-m", "codegeex_ms.preprocess", "--help"],
                               capture_output=True, text=True, check=True).stdout
    assert "--seq-length" in help_text and "jsonl" in help_text
