"""Checkpoints of CodeGeeX: the PyTorch release (.pt), MindSpore .ckpt, safetensors, MindSpore 1.7 names.

All readers and writers hold one tensor in memory at a time. Model parameter names are the
release's keys below ``module`` joined with dots (see ``layout``).
"""

from .base import TensorInfo
from .errors import CheckpointError, CheckpointFormatError, LayoutMismatchError, UnsafePickleError
from .layout import CODEGEEX_13B, ModelSizes, check_layout, infer_sizes, num_parameters, release_layout
from .ms17 import map_ms17_names, ms17_name
from .ms_ckpt import CkptReader, CkptWriter
from .network import load_into_network
from .safetensors_io import SafetensorsReader, SafetensorsWriter
from .sources import ModelWeights, detect_format, load_weights, open_checkpoint, open_weights
from .torch_reader import TorchZipReader
from .torch_writer import TorchZipWriter
from .writers import FORMATS, output_format, save_weights, write_checkpoint

__all__ = [
    "TensorInfo", "CheckpointError", "CheckpointFormatError", "LayoutMismatchError", "UnsafePickleError",
    "CODEGEEX_13B", "ModelSizes", "check_layout", "infer_sizes", "num_parameters", "release_layout",
    "map_ms17_names", "ms17_name", "CkptReader", "CkptWriter", "load_into_network",
    "SafetensorsReader", "SafetensorsWriter", "ModelWeights", "detect_format", "load_weights",
    "open_checkpoint", "open_weights", "TorchZipReader", "TorchZipWriter", "FORMATS", "output_format",
    "save_weights", "write_checkpoint",
]
