"""Element types shared by the checkpoint formats.

Types are named by NumPy-style strings ("float16", "bfloat16", ...). BF16 has no NumPy
builtin; its NumPy dtype is MindSpore's (imported only when a BF16 tensor is met).
"""

import numpy as np

# name -> (PyTorch legacy storage class, PyTorch dtype attribute, MindSpore .ckpt type, safetensors code)
_TABLE = {
    "float16": ("HalfStorage", "float16", "Float16", "F16"),
    "bfloat16": ("BFloat16Storage", "bfloat16", "BFloat16", "BF16"),
    "float32": ("FloatStorage", "float32", "Float32", "F32"),
    "float64": ("DoubleStorage", "float64", "Float64", "F64"),
    "int8": ("CharStorage", "int8", "Int8", "I8"),
    "int16": ("ShortStorage", "int16", "Int16", "I16"),
    "int32": ("IntStorage", "int32", "Int32", "I32"),
    "int64": ("LongStorage", "int64", "Int64", "I64"),
    "uint8": ("ByteStorage", "uint8", "UInt8", "U8"),
    "bool": ("BoolStorage", "bool", "Bool", "BOOL"),
}

TORCH_STORAGE_TO_NAME = {row[0]: name for name, row in _TABLE.items()}
TORCH_DTYPE_TO_NAME = {row[1]: name for name, row in _TABLE.items()}
TORCH_DTYPE_TO_NAME.update({"half": "float16", "float": "float32", "double": "float64",
                            "short": "int16", "int": "int32", "long": "int64"})
CKPT_TYPE_TO_NAME = {row[2]: name for name, row in _TABLE.items()}
SAFETENSORS_TO_NAME = {row[3]: name for name, row in _TABLE.items()}


def torch_storage_class(name: str) -> str:
    """PyTorch storage class name (e.g. "HalfStorage") for dtype ``name``."""
    return _row(name)[0]


def ckpt_type(name: str) -> str:
    """MindSpore .ckpt ``tensor_type`` string (e.g. "Float16") for dtype ``name``."""
    return _row(name)[2]


def safetensors_code(name: str) -> str:
    """safetensors dtype code (e.g. "F16") for dtype ``name``."""
    return _row(name)[3]


def np_dtype(name: str) -> np.dtype:
    """NumPy dtype for ``name``; "bfloat16" is MindSpore's NumPy bfloat16."""
    _row(name)
    if name == "bfloat16":
        from mindspore.common.np_dtype import bfloat16  # pylint: disable=import-outside-toplevel
        return np.dtype(bfloat16)
    return np.dtype(name)


def np_dtype_of(ms_dtype) -> np.dtype:
    """NumPy dtype of a MindSpore dtype (e.g. ``mindspore.float16``), via its .ckpt type name
    (``str(mindspore.float16) == "Float16"``); replaces the deprecated
    ``mindspore.dtype_to_nptype``."""
    try:
        return np_dtype(CKPT_TYPE_TO_NAME[str(ms_dtype)])
    except KeyError:
        raise ValueError(f"Unsupported MindSpore dtype {ms_dtype}.") from None


def dtype_name(dtype) -> str:
    """Canonical name of a NumPy dtype (or anything ``np.dtype`` accepts); checks it is supported."""
    name = np.dtype(dtype).name
    _row(name)
    return name


def itemsize(name: str) -> int:
    """Bytes per element of dtype ``name``."""
    _row(name)
    return 2 if name == "bfloat16" else np.dtype(name).itemsize


def _row(name: str):
    try:
        return _TABLE[name]
    except KeyError:
        raise ValueError(f"Unsupported tensor dtype {name!r}; supported: {', '.join(_TABLE)}.") from None
