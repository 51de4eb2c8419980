"""Training checkpoints: every parameter of a :class:`~codegeex_ms.train.step.TrainState`
(weights, Adam moments, update count, loss scale and its counter) plus a JSON ``meta`` record
(step, data position, RNG seed and micro-step), one file per save and rank.

A file is written under a hidden temporary name, fsynced and renamed to ``step_<8 digits>.ckpt``,
so a crash mid-write never leaves a file with a valid name. It carries MindSpore's CRC32 trailer;
a file is valid only if the trailer is present and matches, the meta record is present and it
holds every parameter the state expects. Loading picks the newest valid file and warns about
every newer one it had to skip.
"""

import json
import logging
import os
import re
import secrets
from pathlib import Path
from typing import Optional

import mindspore as ms

logger = logging.getLogger("codegeex_ms.train")

META_KEY = "train_meta"
_NAME = re.compile(r"^step_(\d{8})\.ckpt$")
_CRC_MARK = b"crc_num"
_CRC_TRAILER = len(_CRC_MARK) + 10


class InvalidCheckpoint(ValueError):
    """A checkpoint file is truncated, corrupt or does not match the training state."""


def checkpoint_name(step: int) -> str:
    return f"step_{step:08d}.ckpt"


def state_parameters(state) -> list:
    """``[(name, Parameter)]`` of ``state``, each parameter once."""
    seen, out = set(), []
    for param in state.get_parameters():
        if id(param) not in seen:
            seen.add(id(param))
            out.append((param.name, param))
    return out


def _has_crc_trailer(path: Path) -> bool:
    """MindSpore only warns when the CRC trailer is missing, so a file cut just before it would
    load; require it."""
    size = path.stat().st_size
    if size < _CRC_TRAILER:
        return False
    with open(path, "rb") as f:
        f.seek(size - _CRC_TRAILER)
        return f.read(len(_CRC_MARK)) == _CRC_MARK


def read_checkpoint(path, expected_names) -> tuple:
    """``(param_dict, meta)`` of a checkpoint file, or :class:`InvalidCheckpoint` saying why not."""
    path = Path(path)
    if not _has_crc_trailer(path):
        raise InvalidCheckpoint(f"{path}: no CRC trailer (the file is truncated)")
    try:
        params = ms.load_checkpoint(str(path), crc_check=True)
    except (ValueError, RuntimeError) as err:
        raise InvalidCheckpoint(f"{path}: {str(err).splitlines()[0]}") from None
    meta = params.pop(META_KEY, None)
    if not isinstance(meta, str):
        raise InvalidCheckpoint(f"{path}: the {META_KEY} record is missing")
    missing = sorted(set(expected_names) - set(params))
    if missing:
        raise InvalidCheckpoint(f"{path}: {len(missing)} parameter(s) of the training state are "
                                f"missing, e.g. {missing[0]} (a different model or recipe?)")
    return params, json.loads(meta)


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class CheckpointManager:
    """Saves and finds the checkpoints of one rank in ``directory``, keeping the newest ``keep``."""

    def __init__(self, directory, keep: int):
        self.directory = Path(directory)
        self.keep = keep
        self.directory.mkdir(parents=True, exist_ok=True)
        for stale in self.directory.glob(".step_*"):  # left by a crash mid-write
            stale.unlink(missing_ok=True)

    def steps(self) -> list:
        """Steps with a checkpoint file (valid or not), newest first."""
        found = (_NAME.match(p.name) for p in self.directory.iterdir())
        return sorted((int(m.group(1)) for m in found if m), reverse=True)

    def path(self, step: int) -> Path:
        return self.directory / checkpoint_name(step)

    def save(self, state, step: int, meta: dict) -> Path:
        """Write ``state`` and ``meta`` (JSON-serialisable) as the checkpoint of ``step``."""
        final = self.path(step)
        tmp = self.directory / f".step_{step:08d}.{secrets.token_hex(4)}.ckpt"
        params = [{"name": name, "data": param} for name, param in state_parameters(state)]
        try:
            ms.save_checkpoint(params, str(tmp), append_dict={META_KEY: json.dumps(meta)},
                               crc_check=True)
            fd = os.open(tmp, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
            os.replace(tmp, final)
        finally:
            tmp.unlink(missing_ok=True)
        _fsync_dir(self.directory)
        for old in self.steps()[self.keep:]:
            self.path(old).unlink(missing_ok=True)
        return final

    def valid(self, step: int, state) -> Optional[tuple]:
        """``(param_dict, meta)`` of the checkpoint of ``step``, or None (with a warning)."""
        names = [name for name, _ in state_parameters(state)]
        try:
            return read_checkpoint(self.path(step), names)
        except (InvalidCheckpoint, OSError) as err:
            logger.warning("skipping checkpoint: %s", err)
            return None

    def newest_valid(self, state, candidates=None) -> Optional[tuple]:
        """``(step, param_dict, meta)`` of the newest valid checkpoint among ``candidates``
        (default: all), or None."""
        for step in self.steps() if candidates is None else candidates:
            found = self.valid(step, state)
            if found is not None:
                return (step,) + found
        return None


def restore(state, params: dict) -> None:
    """Load ``params`` into ``state``; every parameter must be set."""
    not_loaded, _ = ms.load_param_into_net(state, params, strict_load=True)
    if not_loaded:
        raise InvalidCheckpoint(f"{len(not_loaded)} parameter(s) not restored, e.g. {not_loaded[0]}")
