"""Output files that appear complete or not at all."""

import contextlib
import os
import secrets
from pathlib import Path


@contextlib.contextmanager
def atomic_output(path):
    """Yield a binary file (read/write, seekable) that becomes ``path`` only on success.

    The data go to a hidden temporary file in the same directory, which is flushed, fsynced and
    renamed onto ``path`` when the block exits normally, and deleted when it raises.
    """
    path = Path(path)
    if not path.parent.is_dir():
        raise FileNotFoundError(f"output directory {path.parent} does not exist; create it first.")
    tmp = path.parent / f".{path.name}.{secrets.token_hex(4)}.part"
    fd = os.open(tmp, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        with os.fdopen(fd, "w+b") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
