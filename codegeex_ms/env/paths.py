"""Where the project finds data that is not part of the repository."""

import os
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]


def shared_data_dir() -> Path:
    """Directory of shared data (tokenizer, HumanEval-X, fixtures).

    ``$CODEGEEX_SHARED_DATA`` if set, else ``<repo>/../shared/data``. The directory may not exist;
    callers check the files they need and report what is missing.
    """
    env = os.environ.get("CODEGEEX_SHARED_DATA")
    return Path(env) if env else REPO_ROOT.parent / "shared" / "data"


def require_file(path: Path, what: str) -> Path:
    """Return ``path`` if it exists, else raise FileNotFoundError naming ``what`` and the path."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(
            f"{what} not found at {path}. Point CODEGEEX_SHARED_DATA at the shared data directory "
            f"or pass the path explicitly.")
    return path
