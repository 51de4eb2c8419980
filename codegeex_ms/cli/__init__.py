"""One command-line convention for every entry point (``python -m codegeex_ms.<tool>``).

* Shared flags: :func:`add_config_args` (``--config``, ``--set``), :func:`add_checkpoint_arg`,
  :func:`add_tokenizer_dir_arg`, :func:`add_io_args` (``--input``/``--output``),
  :func:`add_quiet_arg`; every :class:`ArgumentParser` has ``--debug``.
* Errors: one message on standard error starting with ``error: `` that names the bad input and
  what to do (a config's problems are all listed at once); no traceback unless ``--debug``.
* Exit status: 0 success; 2 the command line, the config or a named input is wrong (bad flag,
  invalid config, missing, damaged or mismatched input file) — change how you call it; 1 a
  failure while running (disk full, permission denied, an error inside MindSpore, a bug);
  130 interrupted.

An entry point ends with ``sys.exit(cli_common.run(main))``; ``run`` maps whatever ``main``
raises to that format, so ``main`` may raise (``ConfigError``, ``ValueError``, ``SystemExit``
with a message, ...) or print ``error: ...`` itself and return 2.
"""

import argparse
import dataclasses
import errno
import sys
import traceback
from typing import Callable, Optional, Sequence

EXIT_OK, EXIT_FAILURE, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130

# OSErrors about a named input (exit 2); any other OSError is a run-time failure (exit 1)
_INPUT_ERRNOS = {errno.ENOENT, errno.ENOTDIR, errno.EISDIR}


class UsageError(ValueError):
    """The command line is wrong (exit 2)."""


class ArgumentParser(argparse.ArgumentParser):
    """``argparse.ArgumentParser`` with ``--debug`` and the project's error format."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.add_argument("--debug", action="store_true",
                          help="show the full traceback of an error")

    def error(self, message):
        self.exit(EXIT_USAGE, f"error: {message} (see {self.prog} --help)\n")


def add_config_args(parser, required: bool = False) -> None:
    """``--config`` (a YAML path or a name in ascend_configs/) and repeatable ``--set``."""
    from codegeex_ms.config import add_config_args as add  # pylint: disable=import-outside-toplevel
    add(parser, required=required)


def add_checkpoint_arg(parser, required: bool = True, help_text: Optional[str] = None) -> None:
    """``--checkpoint PATH``: model weights in any supported format."""
    parser.add_argument("--checkpoint", required=required, metavar="PATH", help=help_text or (
        "weights: MindSpore .ckpt, .safetensors (float or INT8) or a release-layout .pt"))


def add_tokenizer_dir_arg(parser) -> None:
    """``--tokenizer-dir DIR`` (default: tokenizer.path, $CODEGEEX_TOKENIZER_DIR, shared data)."""
    parser.add_argument("--tokenizer-dir", metavar="DIR", help=(
        "directory with vocab.json/merges.txt (default: tokenizer.path of the config, "
        "$CODEGEEX_TOKENIZER_DIR, then the shared data)"))


def add_model_args(parser, required: bool = True, adapter: bool = True,
                   checkpoint_help: Optional[str] = None) -> None:
    """What loads a model: ``--config``/``--set``, ``--mode``/``--device-target``, ``--checkpoint``
    and (``adapter``) ``--adapter`` and ``--tokenizer-dir``."""
    from codegeex_ms.env.runtime import add_runtime_args  # pylint: disable=import-outside-toplevel
    add_config_args(parser, required=required)
    add_runtime_args(parser)
    add_checkpoint_arg(parser, required=required, help_text=checkpoint_help)
    if adapter:
        parser.add_argument("--adapter", help="LoRA adapter (adapter_final.ckpt of a LoRA run) "
                                              "applied unmerged over --checkpoint")
        add_tokenizer_dir_arg(parser)


def add_io_args(parser, input_help: str, output_help: str, required: bool = True) -> None:
    """``--input PATH`` and ``--output PATH``."""
    parser.add_argument("--input", required=required, metavar="PATH", help=input_help)
    parser.add_argument("--output", required=required, metavar="PATH", help=output_help)


def add_quiet_arg(parser, help_text: str = "no progress bars or progress messages") -> None:
    """``--quiet``."""
    parser.add_argument("--quiet", action="store_true", help=help_text)


def config_for_checkpoint(args, checkpoint):
    """The config of ``--config``/``--set`` with the model sizes of ``checkpoint`` wherever the
    config does not set them (a conflicting setting is a ConfigError naming both values); see
    :mod:`codegeex_ms.checkpoint.model_sizes`."""
    # pylint: disable=import-outside-toplevel
    from codegeex_ms.checkpoint.model_sizes import apply_checkpoint_sizes
    from codegeex_ms.config import ConfigError, config_from_args, config_from_dict, explicit_keys
    cfg = config_from_args(args)
    explicit = explicit_keys(args)
    model = apply_checkpoint_sizes(cfg.model, explicit, checkpoint)
    try:
        return config_from_dict({**cfg.to_dict(), "model": dataclasses.asdict(model)})
    except ConfigError as err:
        hints = [f"{checkpoint} does not record model.{key}: set it with --set model.{key}=N"
                 for key in ("num_heads", "eod_token_id", "real_vocab_size")
                 if f"model.{key}" not in explicit and any(p.startswith(f"model.{key}:")
                                                           for p in err.problems)]
        raise ConfigError(err.problems + hints) from None


def classify(exc: BaseException) -> tuple:
    """``(exit status, message)`` for an exception escaping an entry point."""
    from codegeex_ms.config import ConfigError  # pylint: disable=import-outside-toplevel
    if isinstance(exc, KeyboardInterrupt):
        return EXIT_INTERRUPTED, "interrupted"
    if isinstance(exc, ConfigError):
        return EXIT_USAGE, str(exc)
    if isinstance(exc, OSError) and exc.errno is None:  # raised by this project with a message
        return EXIT_USAGE, str(exc)
    if isinstance(exc, OSError):
        where = f"{exc.filename}: " if exc.filename else ""
        reason = exc.strerror or str(exc)
        if exc.errno in _INPUT_ERRNOS:
            return EXIT_USAGE, f"{where}{reason}; check the path"
        if exc.errno == errno.ENOSPC:
            return EXIT_FAILURE, f"{where}{reason}: free some space and run again"
        return EXIT_FAILURE, f"{where}{reason}"
    if isinstance(exc, (ValueError, LookupError)):
        return EXIT_USAGE, str(exc)
    if isinstance(exc, MemoryError):
        return EXIT_FAILURE, "out of memory: use a smaller batch, sequence or model"
    if isinstance(exc, RuntimeError):
        return EXIT_FAILURE, str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return EXIT_FAILURE, (f"unexpected {type(exc).__name__}: {exc} (a bug; rerun with --debug "
                          "and report the traceback)")


def _message_of_exit(code) -> tuple:
    if code is None or isinstance(code, int):
        return (code or 0), None
    text = str(code)
    return EXIT_USAGE, text[len("error: "):] if text.startswith("error: ") else text


def run(main: Callable, argv: Optional[Sequence[str]] = None) -> int:
    """Call ``main(argv)`` and return its exit status, printing anything it raises as one
    ``error: ...`` message (see the module docstring). With ``--debug`` among the arguments,
    exceptions propagate with their traceback."""
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        status = main(argv)
    except SystemExit as exc:
        status, message = _message_of_exit(exc.code)
        if message is None:
            return status
    except BaseException as exc:  # pylint: disable=broad-except
        if "--debug" in argv:
            traceback.print_exc()
        status, message = classify(exc)
    else:
        return EXIT_OK if status is None else status
    print(f"error: {message}", file=sys.stderr)
    return status
