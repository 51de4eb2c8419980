"""Exceptions raised by the checkpoint layer (all are ValueErrors about the input)."""

_MAX_LISTED = 25


class CheckpointError(ValueError):
    """A checkpoint cannot be used as given."""


class CheckpointFormatError(CheckpointError):
    """A file is unreadable, truncated, corrupt or in an unsupported format."""


class UnsafePickleError(CheckpointFormatError):
    """A PyTorch pickle references a global outside the allow-list; nothing was executed."""

    def __init__(self, path, global_name: str):
        self.global_name = global_name
        super().__init__(
            f"{path}: the pickle references the global '{global_name}', which a tensor checkpoint does "
            f"not need; refusing to load it (nothing was executed). Only load checkpoints from sources "
            f"you trust; a genuine checkpoint can be re-saved as a plain state dict with "
            f"torch.save(state_dict, path).")


class LayoutMismatchError(CheckpointError):
    """Tensor names/shapes differ from those expected; lists every problem at once.

    Attributes: ``missing`` (names), ``unexpected`` (names), ``mismatched``
    (``(name, expected_shape, found_shape)`` triples).
    """

    def __init__(self, what: str, missing=(), unexpected=(), mismatched=()):
        self.missing = sorted(missing)
        self.unexpected = sorted(unexpected)
        self.mismatched = sorted(mismatched)
        lines = [f"{what} does not match the expected layout: {len(self.missing)} missing, "
                 f"{len(self.unexpected)} unexpected, {len(self.mismatched)} with a wrong shape."]
        lines += _section("missing", self.missing)
        lines += _section("unexpected", self.unexpected)
        lines += _section("wrong shape (expected vs found)",
                          [f"{n}: {tuple(e)} vs {tuple(f)}" for n, e, f in self.mismatched])
        super().__init__("\n".join(lines))


def _section(title, items):
    if not items:
        return []
    shown = [f"    {item}" for item in items[:_MAX_LISTED]]
    if len(items) > _MAX_LISTED:
        shown.append(f"    ... and {len(items) - _MAX_LISTED} more")
    return [f"  {title}:"] + shown
