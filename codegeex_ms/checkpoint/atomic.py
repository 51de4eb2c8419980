"""Output files that appear complete or not at all, each vouched for by a checksum manifest.

Every file written through :func:`atomic_output` gets a sidecar ``<file>.manifest.json``
(``{"format", "file", "size", "sha256"}`` over the whole file), written atomically *after* the data
are in place. :func:`verify_file` checks a file against its manifest before anything parses it, so
a truncated, extended, bit-flipped or half-saved file is reported in this project's words (the
file and what is wrong) instead of failing somewhere inside a reader.

A full check hashes the whole file. For large files that are mapped rather than read (the 13 GB
INT8 checkpoint of ``model.quant.load_quantized_mmap``) ``verify_file(..., stamp=True)`` records a
successful check in a second sidecar ``<file>.verified.json`` (the file's size, mtime in ns and
inode, and the sha256 it matched); a later check with an unchanged identity and the same
manifest checksum skips the hash, while size is still checked every time. Any rewrite, append,
truncation or replacement changes the identity and is hashed again; what this cannot see is
damage that keeps size, mtime and inode (bits flipped on the disk under the file system) — a
check without ``stamp`` always hashes.

Save sequence: data to a hidden temporary file, fsync, hash, remove an old manifest of the final
name, rename data onto the final name, write the manifest (temporary, fsync, rename), fsync the
directory. A crash at any point leaves either the old state, or the new data without a manifest
(reported as ``no-manifest``), never a manifest vouching for data it was not computed from.
"""

import contextlib
import hashlib
import json
import os
import secrets
from pathlib import Path
from typing import Optional, Tuple

from .errors import CheckpointFormatError

MANIFEST_SUFFIX = ".manifest.json"
MANIFEST_FORMAT = "codegeex_ms.manifest/1"
STAMP_SUFFIX = ".verified.json"
STAMP_FORMAT = "codegeex_ms.verified/1"
_BLOCK = 16 << 20
_VERIFIED = {}  # resolved path -> (identity, sha256) of files this process verified


class IntegrityError(CheckpointFormatError):
    """A file does not match its manifest. ``reason`` is a short tag used in quarantine names:
    ``missing``, ``no-manifest``, ``bad-manifest``, ``truncated``, ``size`` or ``checksum``."""

    def __init__(self, path, reason: str, detail: str):
        self.path, self.reason = str(path), reason
        super().__init__(f"{path}: {detail}")


def manifest_path(path) -> Path:
    """The sidecar manifest of ``path``."""
    return Path(str(path) + MANIFEST_SUFFIX)


def file_digest(path) -> Tuple[int, str]:
    """``(size in bytes, sha256 hex)`` of the whole file."""
    sha, size = hashlib.sha256(), 0
    with open(path, "rb") as f:
        while True:
            block = f.read(_BLOCK)
            if not block:
                return size, sha.hexdigest()
            sha.update(block)
            size += len(block)


def fsync_path(path) -> None:
    """Make ``path`` durable: a file's data, or the renames and unlinks in a directory."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_manifest(path, size: int, sha256: str) -> Path:
    """Atomically write the manifest of ``path`` (its size and sha256); returns its path."""
    target = manifest_path(path)
    record = {"format": MANIFEST_FORMAT, "file": Path(path).name, "size": size, "sha256": sha256}
    tmp = target.parent / f".{target.name}.{secrets.token_hex(4)}.part"
    try:
        with open(tmp, "x", encoding="utf-8") as f:
            json.dump(record, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return target


def read_manifest(path) -> Optional[dict]:
    """The manifest record of ``path``, None if it has none; IntegrityError if it is unreadable."""
    target = manifest_path(path)
    try:
        record = json.loads(target.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as err:
        raise IntegrityError(path, "bad-manifest", f"its manifest {target.name} is unreadable "
                             f"({err}); the save was interrupted or the manifest damaged") from None
    if not (isinstance(record, dict) and record.get("format") == MANIFEST_FORMAT
            and isinstance(record.get("size"), int) and isinstance(record.get("sha256"), str)):
        raise IntegrityError(path, "bad-manifest", f"its manifest {target.name} is not a "
                             f"{MANIFEST_FORMAT} record")
    return record


def stamp_path(path) -> Path:
    """The sidecar recording a successful full check of ``path`` (see the module docstring)."""
    return Path(str(path) + STAMP_SUFFIX)


def _stamp_matches(path: Path, identity, sha256: str) -> bool:
    try:
        record = json.loads(stamp_path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return record == _stamp_record(identity, sha256)


def _stamp_record(identity, sha256: str) -> dict:
    size, mtime_ns, inode = identity
    return {"format": STAMP_FORMAT, "size": size, "mtime_ns": mtime_ns, "inode": inode, "sha256": sha256}


def _write_stamp(path: Path, identity, sha256: str) -> None:
    """Best effort: a directory that cannot be written just means hashing again next time."""
    target = stamp_path(path)
    tmp = target.parent / f".{target.name}.{secrets.token_hex(4)}.part"
    try:
        tmp.write_text(json.dumps(_stamp_record(identity, sha256)), encoding="utf-8")
        os.replace(tmp, target)
    except OSError:
        tmp.unlink(missing_ok=True)


def verify_file(path, required: bool = True, stamp: bool = False) -> bool:
    """Check ``path`` against its manifest (size first, then the sha256 of the whole file).

    Returns True if it matches, False if there is no manifest and ``required`` is False (a file
    this project did not write, e.g. a downloaded release). Raises :class:`IntegrityError` naming
    the file and what is wrong otherwise. ``stamp``: skip the hash when a stamp of an earlier
    successful check matches the file's size, mtime and inode and the manifest's checksum, and
    write that stamp after a successful hash (see the module docstring for what this trusts).
    """
    path = Path(path)
    record = read_manifest(path)
    if record is not None and _VERIFIED.get(str(path.resolve())) == (file_identity(path), record["sha256"]):
        return True  # verified by this process and unchanged since
    if not path.is_file():
        detail = "is missing" + (f" (its manifest {manifest_path(path).name} remains)" if record else "")
        raise IntegrityError(path, "missing", detail)
    if record is None:
        if required:
            raise IntegrityError(path, "no-manifest", f"has no manifest {manifest_path(path).name}, "
                                 "so it cannot be verified (the save was interrupted before it "
                                 "completed)")
        return False
    size = path.stat().st_size
    if size != record["size"]:
        reason = "truncated" if size < record["size"] else "size"
        raise IntegrityError(path, reason, f"has {size} bytes, its manifest says {record['size']} "
                             f"({'truncated' if reason == 'truncated' else 'extended or replaced'}); "
                             "the file is damaged: re-create it or use another checkpoint")
    identity = file_identity(path)
    if stamp and _stamp_matches(path, identity, record["sha256"]):
        _VERIFIED[str(path.resolve())] = (identity, record["sha256"])
        return True
    if file_digest(path)[1] != record["sha256"]:
        raise IntegrityError(path, "checksum", "sha256 does not match its manifest (the file is "
                             "damaged, e.g. flipped bits on disk): re-create it or use another "
                             "checkpoint")
    _VERIFIED[str(path.resolve())] = (identity, record["sha256"])
    if stamp:
        _write_stamp(path, identity, record["sha256"])
    return True


def file_identity(path: Path):
    """What changes when a file is rewritten or touched: (size, mtime in ns, inode)."""
    try:
        st = path.stat()
    except FileNotFoundError:
        return None
    return (st.st_size, st.st_mtime_ns, st.st_ino)


def replace_with_manifest(tmp, path) -> Path:
    """Hash the complete, fsynced file ``tmp``, rename it onto ``path`` and write its manifest
    (see the module docstring for the order); returns the manifest path."""
    size, sha = file_digest(tmp)
    path = Path(path)
    manifest_path(path).unlink(missing_ok=True)  # an old manifest must never vouch for new data
    stamp_path(path).unlink(missing_ok=True)     # nor an old stamp (its identity would not match anyway)
    os.replace(tmp, path)
    try:
        target = write_manifest(path, size, sha)
    except Exception:
        path.unlink(missing_ok=True)  # data nobody can verify are not left under the final name
        raise
    fsync_path(path.parent)
    return target


@contextlib.contextmanager
def atomic_path(path, suffix: str = ".part"):
    """Yield a hidden temporary path (ending in ``suffix``) in the directory of ``path``; what the
    block writes there is fsynced, hashed and renamed onto ``path`` with its manifest
    (:func:`replace_with_manifest`) when the block exits normally, and deleted when it raises."""
    path = Path(path)
    if not path.parent.is_dir():
        raise FileNotFoundError(f"output directory {path.parent} does not exist; create it first.")
    tmp = path.parent / f".{path.name}.{secrets.token_hex(4)}{suffix}"
    try:
        yield tmp
        fsync_path(tmp)
        replace_with_manifest(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


@contextlib.contextmanager
def atomic_output(path):
    """Yield a binary file (read/write, seekable) that becomes ``path`` only on success (see
    :func:`atomic_path`)."""
    with atomic_path(path) as tmp, os.fdopen(os.open(tmp, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o666), "w+b") as f:
        yield f
