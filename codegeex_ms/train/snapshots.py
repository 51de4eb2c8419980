"""Training checkpoints that cannot be lost: every parameter of a
:class:`~codegeex_ms.train.step.TrainState` (weights, Adam moments, update count, loss scale and its
counter) plus a JSON ``meta`` record (step, data position, RNG seed and micro-step), one file per
save and rank, each with a checksum manifest.

Files in a rank's directory: ``step_<8 digits>.ckpt`` with ``step_<8 digits>.ckpt.manifest.json``
(size and sha256 of the whole file). A save goes through :func:`codegeex_ms.checkpoint.atomic.atomic_path`
(hidden temporary file, fsync, hash, rename, then the manifest atomically), so a crash at any point leaves the previous checkpoints untouched and at worst a newest file
without a manifest.

A checkpoint is *verified* when it matches its manifest; only then does MindSpore open it. Rules:

* rotation keeps the newest ``keep`` verified checkpoints and deletes only older verified ones;
* a damaged checkpoint (no manifest, truncated, flipped bits, missing file) is never kept under
  its name and never counted: it is renamed ``step_<8 digits>.ckpt.corrupt-<reason>`` (with its
  manifest, if any) and a warning names the file and what is wrong;
* nothing is deleted unless at least one verified checkpoint remains.
"""

import json
import logging
import os
import re
import secrets
from pathlib import Path
from typing import Optional

import mindspore as ms

from codegeex_ms.checkpoint.atomic import (IntegrityError, atomic_path, file_identity, fsync_path,
                                           manifest_path, verify_file)
from codegeex_ms.lora.layers import is_frozen

logger = logging.getLogger("codegeex_ms.train")

META_KEY = "train_meta"
_NAME = re.compile(r"^step_(\d{8})\.ckpt(\.manifest\.json)?$")


class InvalidCheckpoint(ValueError):
    """A checkpoint file is damaged or does not match the training state."""


class StateMismatch(InvalidCheckpoint):
    """A verified checkpoint was written for a different training state (model or recipe)."""


def checkpoint_name(step: int) -> str:
    return f"step_{step:08d}.ckpt"


def state_parameters(state) -> list:
    """``[(name, Parameter)]`` of ``state``, each parameter once, without the frozen base weights
    of LoRA training (``codegeex_ms.lora``: they come from ``train.init_weights``)."""
    seen, out = set(), []
    for param in state.get_parameters():
        if id(param) not in seen and not is_frozen(param):
            seen.add(id(param))
            out.append((param.name, param))
    return out


def read_checkpoint(path, expected_names) -> tuple:
    """``(param_dict, meta)`` of a checkpoint file verified against its manifest.

    Raises :class:`IntegrityError` (file damaged: the file and what is wrong) or
    :class:`StateMismatch` (intact but for another training state).
    """
    path = Path(path)
    verify_file(path, required=True)
    try:
        params = ms.load_checkpoint(str(path), crc_check=True)
    except (ValueError, RuntimeError) as err:  # matches its manifest, so written that way
        raise StateMismatch(f"{path}: not a MindSpore checkpoint ({str(err).splitlines()[0]})") from None
    meta = params.pop(META_KEY, None)
    if not isinstance(meta, str):
        raise StateMismatch(f"{path}: the {META_KEY} record is missing (not a training checkpoint)")
    missing = sorted(set(expected_names) - set(params))
    if missing:
        raise StateMismatch(f"{path}: {len(missing)} parameter(s) of the training state are "
                            f"missing, e.g. {missing[0]} (a different model or recipe?)")
    return params, json.loads(meta)


class CheckpointManager:
    """Saves, verifies, rotates and quarantines the checkpoints of one rank in ``directory``."""

    def __init__(self, directory, keep: int):
        self.directory = Path(directory)
        self.keep = keep
        self.directory.mkdir(parents=True, exist_ok=True)
        self._verified = {}  # step -> (size, mtime_ns, inode) when last verified in this process
        for stale in self.directory.glob(".step_*"):  # left by a crash mid-write
            stale.unlink(missing_ok=True)

    def steps(self) -> list:
        """Steps with a checkpoint file or manifest (verified or not), newest first."""
        found = (_NAME.match(p.name) for p in self.directory.iterdir())
        return sorted({int(m.group(1)) for m in found if m}, reverse=True)

    def path(self, step: int) -> Path:
        return self.directory / checkpoint_name(step)

    def save(self, state, step: int, meta: dict) -> Path:
        """Write ``state`` and ``meta`` (JSON-serialisable) as the checkpoint of ``step``, then
        rotate (see the module docstring)."""
        final = self.path(step)
        with atomic_path(final, suffix=".ckpt") as tmp:  # MindSpore appends .ckpt to other names
            params = [{"name": name, "data": param} for name, param in state_parameters(state)]
            ms.save_checkpoint(params, str(tmp), append_dict={META_KEY: json.dumps(meta)}, crc_check=True)
        self._remember(step)
        self.rotate()
        return final

    def check(self, step: int) -> None:
        """Verify the checkpoint of ``step`` against its manifest (IntegrityError if damaged);
        a file already verified by this process and unchanged since is not hashed again."""
        path = self.path(step)
        if step in self._verified and file_identity(path) == self._verified[step]:
            return
        self._verified.pop(step, None)
        verify_file(path, required=True)
        self._remember(step)

    def verified_steps(self) -> list:
        """Steps whose checkpoint verifies, newest first; damaged ones are quarantined."""
        good = []
        for step in self.steps():
            try:
                self.check(step)
            except IntegrityError as err:
                self.quarantine(step, err)
            else:
                good.append(step)
        return good

    def rotate(self) -> None:
        """Quarantine damaged checkpoints and delete verified ones beyond the newest ``keep``."""
        good = self.verified_steps()
        for step in good[max(self.keep, 1):]:
            _remove(manifest_path(self.path(step)))  # without its manifest it no longer counts
            _remove(self.path(step))
            self._verified.pop(step, None)
        fsync_path(self.directory)

    def quarantine(self, step: int, err: IntegrityError) -> None:
        """Rename the damaged checkpoint of ``step`` (and its manifest) to
        ``step_<8 digits>.ckpt.corrupt-<reason>`` and warn with the file and what is wrong."""
        path = self.path(step)
        target = self.directory / f"{path.name}.corrupt-{err.reason}"
        if target.exists() or manifest_path(target).exists():
            target = self.directory / f"{target.name}-{secrets.token_hex(2)}"
        logger.warning("damaged checkpoint: %s; moved aside as %s", err, target.name)
        if path.exists():
            _rename(path, target)
        if manifest_path(path).exists():
            _rename(manifest_path(path), manifest_path(target))
        self._verified.pop(step, None)
        fsync_path(self.directory)

    def load(self, step: int, state) -> tuple:
        """``(param_dict, meta)`` of the verified checkpoint of ``step`` for ``state``."""
        names = [name for name, _ in state_parameters(state)]
        return read_checkpoint(self.path(step), names)

    def newest_valid(self, state, candidates=None) -> Optional[tuple]:
        """``(step, param_dict, meta)`` of the newest verified checkpoint among ``candidates``
        (default: all), or None if there is none. Damaged checkpoints met on the way are
        quarantined; an intact one for another state raises :class:`StateMismatch`."""
        good = self.verified_steps()
        for step in good if candidates is None else [s for s in candidates if s in good]:
            return (step,) + self.load(step, state)
        return None

    def _remember(self, step: int) -> None:
        self._verified[step] = file_identity(self.path(step))


def _remove(path: Path) -> None:
    path.unlink(missing_ok=True)


def _rename(src: Path, dst: Path) -> None:
    os.replace(src, dst)


def restore(state, params: dict) -> None:
    """Load ``params`` into ``state``; every parameter must be set."""
    not_loaded, _ = ms.load_param_into_net(state, params, strict_load=True)
    saved = {name for name, _ in state_parameters(state)}
    not_loaded = [name for name in not_loaded if name in saved]
    if not_loaded:
        raise StateMismatch(f"{len(not_loaded)} parameter(s) not restored, e.g. {not_loaded[0]}")
