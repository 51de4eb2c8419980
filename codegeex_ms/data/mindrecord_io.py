"""Sharded MindRecord files of packed samples: writing, atomic publication, manifest, checks.

An output directory holds ``<prefix>-NNNNN.mindrecord`` (+ ``.db`` index) shards, each a table with
one int32 column ``input_ids`` of shape [sample_length], plus ``manifest.json`` (format, lengths,
EOD id, per-shard sample counts, sizes and SHA-256). Shards are written into a sibling staging
directory ``<output>.partial`` that is renamed to ``<output>`` only when complete, so an interrupted
run never leaves half-written shards in ``<output>``; the next run removes the leftover staging
directory. MindRecord creates files with mode 0600.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

import numpy as np

FORMAT = "codegeex-ms-packed-v1"
COLUMN = "input_ids"
MANIFEST = "manifest.json"
STAGING_MARKER = ".preprocess-staging"
SHARD_SUFFIX = ".mindrecord"


def _next_pow2(n: int) -> int:
    return 1 << max(0, int(n) - 1).bit_length()


def page_and_header_size(sample_length: int, samples_per_shard: int) -> tuple[int, int]:
    """MindRecord page and header sizes (bytes) for int32 rows of ``sample_length``: pages of
    about 32 rows (the 32 MiB default makes even tiny shards ~50 MB), and a header with room for
    64 bytes of page metadata per row (measured need: under 40)."""
    page = min(max(_next_pow2(sample_length * 4 * 32), 1 << 15), 1 << 28)
    header = min(max(_next_pow2((1 << 14) + 64 * samples_per_shard), 1 << 14), 1 << 27)
    return page, header


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            digest.update(block)
    return digest.hexdigest()


class ShardWriter:
    """Writes int32 samples of ``sample_length`` into consecutive shards of at most
    ``samples_per_shard`` rows in ``directory``."""

    def __init__(self, directory: Path, sample_length: int, samples_per_shard: int = 10000,
                 prefix: str = "pretrain"):
        if samples_per_shard < 1 or samples_per_shard > 2_000_000:
            raise ValueError(f"samples_per_shard must be in 1..2000000, got {samples_per_shard}")
        self.directory = Path(directory)
        self.sample_length = sample_length
        self.samples_per_shard = samples_per_shard
        self.prefix = prefix
        self.shards: list[dict] = []
        self._writer = None
        self._rows: list[dict] = []
        self._in_shard = 0
        self.samples_written = 0

    def _open(self) -> None:
        from mindspore.mindrecord import FileWriter

        name = f"{self.prefix}-{len(self.shards):05d}{SHARD_SUFFIX}"
        self._writer = FileWriter(str(self.directory / name), shard_num=1, overwrite=True)
        page, header = page_and_header_size(self.sample_length, self.samples_per_shard)
        self._writer.set_page_size(page)
        self._writer.set_header_size(header)
        self._writer.add_schema({COLUMN: {"type": "int32", "shape": [self.sample_length]}},
                                "packed token samples")
        self.shards.append({"file": name, "samples": 0})
        self._in_shard = 0

    def _flush(self) -> None:
        if self._rows:
            self._writer.write_raw_data(self._rows)
            self.shards[-1]["samples"] += len(self._rows)
            self._rows = []

    def _commit(self) -> None:
        self._flush()
        self._writer.commit()
        self._writer = None
        entry = self.shards[-1]
        path = self.directory / entry["file"]
        entry["bytes"] = path.stat().st_size
        entry["sha256"] = _sha256(path)

    def write(self, sample: np.ndarray) -> None:
        """Append one sample (int-like [sample_length])."""
        sample = np.asarray(sample, dtype=np.int32)
        if sample.shape != (self.sample_length,):
            raise ValueError(f"sample has shape {sample.shape}, expected ({self.sample_length},)")
        if self._writer is None:
            self._open()
        self._rows.append({COLUMN: sample})
        self._in_shard += 1
        self.samples_written += 1
        if len(self._rows) >= 512:
            self._flush()
        if self._in_shard == self.samples_per_shard:
            self._commit()

    def close(self) -> list[dict]:
        """Commit the open shard; returns ``[{"file", "samples", "bytes", "sha256"}]``."""
        if self._writer is not None:
            self._commit()
        return self.shards


def staging_dir(output: Path) -> Path:
    """Sibling staging directory of ``output``."""
    output = Path(output)
    return output.parent / (output.name + ".partial")


def prepare_output(output: Path, overwrite: bool) -> Path:
    """Check ``output`` may be (re)written, clear a leftover staging directory, create and return
    a fresh one. Raises FileExistsError when ``output`` holds something else or a finished run
    and ``overwrite`` is off."""
    output = Path(output)
    if output.exists() and (not output.is_dir() or any(output.iterdir())):
        if not (output / MANIFEST).is_file():
            raise FileExistsError(f"output {output} exists and is not a preprocessing output "
                                  f"(no {MANIFEST}); choose an empty or new directory.")
        if not overwrite:
            raise FileExistsError(f"output {output} already holds a finished run; pass "
                                  f"--overwrite to replace it.")
    staging = staging_dir(output)
    if staging.exists():
        if not (staging / STAGING_MARKER).exists():
            raise FileExistsError(f"{staging} exists but was not made by preprocessing; remove it.")
        shutil.rmtree(staging)
    staging.mkdir(parents=True)
    (staging / STAGING_MARKER).touch()
    return staging


def publish(staging: Path, output: Path) -> None:
    """Move a complete staging directory to ``output``, replacing a previous run."""
    output = Path(output)
    (Path(staging) / STAGING_MARKER).unlink()
    if output.exists():
        old = output.parent / (output.name + ".old")
        shutil.rmtree(old, ignore_errors=True)
        os.rename(output, old)
        os.rename(staging, output)
        shutil.rmtree(old)
    else:
        os.rename(staging, output)


def write_manifest(directory: Path, shards: list[dict], **fields) -> dict:
    """Write ``manifest.json`` (``format``, ``fields``, ``shards``) into ``directory``."""
    manifest = {"format": FORMAT, **fields, "num_samples": sum(s["samples"] for s in shards),
                "shards": shards}
    with open(Path(directory) / MANIFEST, "w", encoding="utf-8") as f:
        json.dump(manifest, f, indent=1)
    return manifest


def resolve_shards(data) -> tuple[list[Path], dict | None]:
    """Shard files and manifest (or None) for a preprocessing output directory, a manifest path,
    one shard file, or a list of shard files (kept in the given order)."""
    if isinstance(data, (str, os.PathLike)):
        path = Path(data)
        if path.is_dir():
            if (path / MANIFEST).is_file():
                return resolve_shards(path / MANIFEST)
            files = sorted(path.glob("*" + SHARD_SUFFIX))
            if not files:
                raise FileNotFoundError(f"{path} has neither {MANIFEST} nor *{SHARD_SUFFIX} files; "
                                        f"run `python -m codegeex_ms.preprocess` to make shards.")
            return files, None
        if path.name == MANIFEST or path.suffix == ".json":
            with open(path, encoding="utf-8") as f:
                manifest = json.load(f)
            if manifest.get("format") != FORMAT:
                raise ValueError(f"{path} is not a {FORMAT} manifest (format={manifest.get('format')!r}).")
            return [path.parent / s["file"] for s in manifest["shards"]], manifest
        return [path], None
    files = [Path(p) for p in data]
    if not files:
        raise ValueError("no shard files given")
    return files, None


def check_shards(files: list[Path], sample_length: int, manifest: dict | None = None,
                 verify_checksums: bool = False) -> list[int]:
    """Validate shards before reading; returns their sample counts.

    Checks that each file and its ``.db`` index exist, that size (and optionally SHA-256) match
    the manifest, and that the MindRecord header opens with an int32 ``input_ids`` column of shape
    [sample_length]. Raises ValueError/FileNotFoundError naming the bad file.
    """
    from mindspore.mindrecord import FileReader

    fix = "re-run `python -m codegeex_ms.preprocess` to rebuild the shards"
    if manifest is not None and manifest.get("sample_length") != sample_length:
        raise ValueError(f"shards hold samples of {manifest.get('sample_length')} tokens "
                         f"(seq_length {manifest.get('seq_length')}), but seq_length "
                         f"{sample_length - 1} needs {sample_length}; preprocess with "
                         f"--seq-length {sample_length - 1} or change seq_length.")
    entries = manifest["shards"] if manifest is not None else [None] * len(files)
    counts = []
    for path, entry in zip(files, entries):
        for needed in (path, Path(str(path) + ".db")):
            if not needed.is_file():
                raise FileNotFoundError(f"shard file {needed} is missing; {fix}.")
        if entry is not None and path.stat().st_size != entry["bytes"]:
            raise ValueError(f"shard {path} has {path.stat().st_size} bytes, the manifest says "
                             f"{entry['bytes']}: it is truncated or corrupt; {fix}.")
        if verify_checksums and entry is not None and _sha256(path) != entry["sha256"]:
            raise ValueError(f"shard {path} fails its SHA-256 check: it is corrupt; {fix}.")
        try:
            reader = FileReader(str(path))
            schema, count = reader.schema(), reader.len()
            reader.close()
        except Exception as exc:  # MindSpore raises RuntimeError with a long framework message
            raise ValueError(f"shard {path} is not a readable MindRecord file "
                             f"({str(exc).strip().splitlines()[0]}); {fix}.") from None
        column = schema.get(COLUMN, {})
        if column.get("type") != "int32" or list(column.get("shape", [])) != [sample_length]:
            raise ValueError(f"shard {path} has column {COLUMN} {column or 'missing'}, expected "
                             f"int32 of shape [{sample_length}] (seq_length {sample_length - 1}); "
                             f"preprocess with the same --seq-length or change seq_length.")
        if entry is not None and count != entry["samples"]:
            raise ValueError(f"shard {path} holds {count} samples, the manifest says "
                             f"{entry['samples']}; {fix}.")
        counts.append(count)
    return counts
