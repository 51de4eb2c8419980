"""Basic Cells with the release's parameter names: Linear, LayerNorm, Embedding.

Every Cell here keeps its parameters in ``param_dtype`` and computes in ``compute_dtype``
(LayerNorm always in FP32). ``shard(...)`` sets MindSpore shard strategies (used only under
semi-auto parallel) and ``shard_inputs(...)`` states the input shapes each sharded primitive
sees, which the static plan checker (``codegeex_ms.parallel.checker``) verifies.
"""

from dataclasses import dataclass

import mindspore as ms
from mindspore import Parameter, nn, ops
from mindspore.common.initializer import Normal, One, Zero, initializer

from codegeex_ms.ops.fused import fused_layer_norm
from codegeex_ms.ops.w8a16 import float_weight_matmul, w8a16_matmul

DTYPE = {"float16": ms.float16, "float32": ms.float32}


@dataclass(frozen=True)
class LinearSpec:
    """The numerics of a :class:`Linear`: parameter and compute dtypes ("float16" | "float32"),
    init std, weight quantization ("none" | "int8") and fused kernels ("auto" | "on" | "off")."""

    compute_dtype: str = "float32"
    param_dtype: str = "float32"
    init_std: float = 0.02
    weight_quant: str = "none"
    fused: str = "auto"

    def __post_init__(self):
        if self.weight_quant not in ("none", "int8"):
            raise ValueError(f"weight_quant={self.weight_quant!r}: must be 'none' or 'int8'")

    @classmethod
    def of_model(cls, cfg) -> "LinearSpec":
        """The spec of every Linear of a model config."""
        return cls(cfg.compute_dtype, cfg.param_dtype, cfg.init_std, cfg.weight_quant, cfg.fused_kernels)


class RowBiasAdd(nn.Cell):
    """``x [rows, n] + b [n]``, bit for bit a broadcasting ``Add``, faster on CPU: the forward is
    MindSpore's ``BiasAdd`` (~2× a broadcasting Add at [1024, 4096] on CPU) and the bias gradient a
    ``ReduceSum`` over rows (``BiasAddGrad`` is the slower one there). For unsharded layers in
    training: a sharded :class:`Linear` uses ``ops.Add`` with a strategy, and inference calls
    ``add`` alone, because MindSpore keeps a Cell with a custom ``bprop`` as a call it does not
    inline and copies (``TensorMove``) every parameter read on both sides of it once per forward
    (the tied word-embedding table twice per decode step)."""

    def __init__(self):
        super().__init__()
        self.add = ops.BiasAdd()
        self.sum = ops.ReduceSum()

    def construct(self, x, b):
        return self.add(x, b)

    def bprop(self, x, b, out, dout):
        return dout, self.sum(dout, 0)


def linear(in_features: int, out_features: int, spec: LinearSpec) -> "Linear":
    """A :class:`QuantizedLinear` when ``spec.weight_quant`` is "int8", else a :class:`Linear`."""
    return (QuantizedLinear if spec.weight_quant == "int8" else Linear)(in_features, out_features, spec)


class Linear(nn.Cell):
    """``y = x · Wᵀ + b`` over the last axis: x [..., in] (any float dtype) → [..., out] in
    ``spec.compute_dtype``; ``weight`` [out, in], ``bias`` [out] (torch layout).

    FP16 weights with FP32 compute, on CPU, in inference (``set_train(False)``) and unsharded:
    the product runs the float-weight kernel (``ops.w8a16.float_weight_matmul``, chosen by
    ``spec.fused``), which widens the weights in registers instead of casting an FP32 copy each
    call; otherwise MindSpore's MatMul. Each output is the same FP32 dot product either way (up to
    summation order).

    The bias is added by a broadcasting ``Add`` with a strategy when sharded; unsharded by
    :class:`RowBiasAdd` in training and by its ``BiasAdd`` alone in inference (the same values).
    """

    def __init__(self, in_features: int, out_features: int, spec: LinearSpec = LinearSpec()):
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self._make_weight(spec)
        self.bias = Parameter(initializer(Zero(), [out_features], DTYPE[spec.param_dtype]), name="bias")
        self.compute_dtype = DTYPE[spec.compute_dtype]
        self.matmul = ops.MatMul(transpose_b=True)
        self.fused_matmul = (float_weight_matmul(spec.fused)
                             if (spec.param_dtype, spec.compute_dtype) == ("float16", "float32") else None)
        self.bias_add = ops.Add()          # sharded layers (it carries the strategy)
        self.row_bias_add = RowBiasAdd()   # unsharded layers
        self.sharded = False
        self.cast = ops.Cast()
        self.reshape = ops.Reshape()

    def _make_weight(self, spec):
        self.weight = Parameter(initializer(Normal(spec.init_std), [self.out_features, self.in_features],
                                            DTYPE[spec.param_dtype]), name="weight")

    def shard_column(self, dp, mp):
        """Split the output features over ``mp`` (q/k/v, dense_h_to_4h)."""
        self.matmul.shard(((dp, 1), (mp, 1)))
        self.fused_matmul = None  # the custom kernels have no shard strategy
        self.sharded = True
        self.bias_add.shard(((dp, mp), (mp,)))
        self.split = {"weight": (mp, 1), "bias": (mp,)}
        return self

    def shard_row(self, dp, mp):
        """Split the input features over ``mp``; the product is reduced (attention.dense, dense_4h_to_h)."""
        self.matmul.shard(((dp, mp), (1, mp)))
        self.fused_matmul = None  # the custom kernels have no shard strategy
        self.sharded = True
        self.bias_add.shard(((dp, 1), (1,)))
        self.split = {"weight": (1, mp), "bias": (1,)}
        return self

    def shard_inputs(self, rows):
        """Input shapes of the sharded primitives for ``rows`` flattened tokens."""
        return {"matmul": [(rows, self.in_features), (self.out_features, self.in_features)],
                "bias_add": [(rows, self.out_features), (self.out_features,)]}

    def _product(self, x):
        """``x`` [rows, in] (compute dtype) · Wᵀ → [rows, out]."""
        if self.fused_matmul is not None and not self.training:
            return self.fused_matmul(x, self.weight)
        return self.matmul(x, self.cast(self.weight, self.compute_dtype))

    def construct(self, x):
        out_shape = x.shape[:-1] + (self.out_features,)
        x = self.reshape(self.cast(x, self.compute_dtype), (-1, self.in_features))
        y, bias = self._product(x), self.cast(self.bias, self.compute_dtype)
        if self.sharded:
            y = self.bias_add(y, bias)
        elif self.training:
            y = self.row_bias_add(y, bias)
        else:
            y = self.row_bias_add.add(y, bias)   # its BiasAdd without the bprop Cell (see the class)
        return self.reshape(y, out_shape)


class QuantizedLinear(Linear):
    """W8A16 :class:`Linear` (see ``codegeex_ms.model.quant``): ``weight`` is int8 [out, in] and
    ``weight_scale`` FP32 [out], ``W = weight · weight_scale[:, None]``; the bias stays float.

    With FP32 compute the scale is applied after the matmul, ``y = (x · weightᵀ) · scale + b``:
    the int8 → FP32 cast is exact, so this differs from multiplying by the dequantized W only by
    FP32 rounding (relative ~1e-7, far below the quantization error of ~scale/2 per weight) and
    saves a pass over the weight. With FP16 compute the weight is dequantized first (in FP32, then
    cast), because ``x · weightᵀ`` is 1/scale (~10³) times larger than ``y`` and could overflow FP16.

    On CPU, unsharded layers use the fused W8A16 kernel (``codegeex_ms.ops.w8a16``, chosen by
    ``spec.fused``): the int8 weight is widened in registers, never cast to a float copy, and the
    scale applied to the FP32 sum (one rounding to the compute dtype). It has no backward, so it
    serves inference; sharding a layer switches it back to the built-in operators.
    """

    def __init__(self, in_features: int, out_features: int, spec: LinearSpec):
        super().__init__(in_features, out_features, spec)
        self.fold_scale = spec.compute_dtype == "float32"
        self.scale_mul = ops.Mul()
        self.fused_matmul = w8a16_matmul(spec.fused)

    def _make_weight(self, spec):
        self.weight = Parameter(initializer(Zero(), [self.out_features, self.in_features], ms.int8),
                                name="weight", requires_grad=False)
        self.weight_scale = Parameter(initializer(Zero(), [self.out_features], ms.float32),
                                      name="weight_scale", requires_grad=False)

    def shard_column(self, dp, mp):
        super().shard_column(dp, mp)
        self.scale_mul.shard(((dp, mp), (mp,)) if self.fold_scale else ((mp, 1), (mp, 1)))
        self.split["weight_scale"] = (mp,)
        return self

    def shard_row(self, dp, mp):
        super().shard_row(dp, mp)
        self.scale_mul.shard(((dp, 1), (1,)) if self.fold_scale else ((1, mp), (1, 1)))
        self.split["weight_scale"] = (1,)
        return self

    def shard_inputs(self, rows):
        shapes = super().shard_inputs(rows)
        shapes["scale_mul"] = ([(rows, self.out_features), (self.out_features,)] if self.fold_scale else
                               [(self.out_features, self.in_features), (self.out_features, 1)])
        return shapes

    def _product(self, x):
        if self.fused_matmul is not None:
            return self.fused_matmul(x, self.weight, self.weight_scale)
        if self.fold_scale:
            return self.scale_mul(self.matmul(x, self.cast(self.weight, self.compute_dtype)), self.weight_scale)
        w = self.scale_mul(self.cast(self.weight, ms.float32),
                           self.reshape(self.weight_scale, (self.out_features, 1)))
        return self.matmul(x, self.cast(w, self.compute_dtype))


class LayerNorm(nn.Cell):
    """LayerNorm over the last axis in FP32; ``weight``/``bias`` [hidden]; output in ``out_dtype``.

    ``fused`` (auto | on | off, default off): the FP32 LayerNorm kernel of the CPU
    (``codegeex_ms.ops.fused.fused_layer_norm``; MindSpore's CPU LayerNormGrad is several times
    slower) instead of ``ops.LayerNorm``; :meth:`shard` under (semi-)auto parallel or ``dp > 1``
    switches back to the built-in.
    """

    def __init__(self, hidden, eps=1e-5, out_dtype="float32", param_dtype="float32", fused="off"):
        super().__init__()
        self.hidden = hidden
        self.weight = Parameter(initializer(One(), [hidden], DTYPE[param_dtype]), name="weight")
        self.bias = Parameter(initializer(Zero(), [hidden], DTYPE[param_dtype]), name="bias")
        self.out_dtype = DTYPE[out_dtype]
        self.norm = ops.LayerNorm(begin_norm_axis=-1, begin_params_axis=-1, epsilon=eps)
        kernel = fused_layer_norm(fused)
        self.fused_norm = kernel.forward if kernel is not None else None
        self.eps = ms.Tensor([eps], ms.float32)
        self.cast = ops.Cast()

    def shard(self, dp):
        self.norm.shard(((dp, 1, 1), (1,), (1,)))
        self.split = {"weight": (1,), "bias": (1,)}
        mode = ms.get_auto_parallel_context("parallel_mode")
        if dp > 1 or mode in (ms.ParallelMode.SEMI_AUTO_PARALLEL, ms.ParallelMode.AUTO_PARALLEL):
            self.fused_norm = None  # the custom kernel has no shard strategy
        return self

    def shard_inputs(self, batch, seq):
        return {"norm": [(batch, seq, self.hidden), (self.hidden,), (self.hidden,)]}

    def construct(self, x):
        x, w, b = self.cast(x, ms.float32), self.cast(self.weight, ms.float32), self.cast(self.bias, ms.float32)
        if self.fused_norm is not None:
            y = self.fused_norm(x, w, b, self.eps)
        else:
            y, _, _ = self.norm(x, w, b)
        return self.cast(y, self.out_dtype)


class Embedding(nn.Cell):
    """Lookup table ``weight`` [rows, hidden]; ids [B, S] int32 → [B, S, hidden] in ``out_dtype``."""

    def __init__(self, rows, hidden, out_dtype="float32", param_dtype="float32", init_std=0.02):
        super().__init__()
        self.rows, self.hidden = rows, hidden
        self.weight = Parameter(initializer(Normal(init_std), [rows, hidden], DTYPE[param_dtype]),
                                name="weight")
        self.out_dtype = DTYPE[out_dtype]
        self.gather = ops.Gather()
        self.cast = ops.Cast()

    def shard(self, dp, rows_split=1):
        """Split the table by rows over ``rows_split`` (vocabulary parallel), ids by batch."""
        self.gather.shard(((rows_split, 1), (dp, 1)))
        self.split = {"weight": (rows_split, 1)}
        return self

    def shard_inputs(self, batch, seq):
        return {"gather": [(self.rows, self.hidden), (batch, seq)]}

    def construct(self, ids):
        return self.cast(self.gather(self.weight, ids, 0), self.out_dtype)


def shard_dropout(dropout: nn.Cell, strategy: tuple) -> None:
    """Shard an ``nn.Dropout``'s primitive with ``strategy``. Other dropout Cells (the CPU
    training's stateless dropout, installed by ``train.dropout``) run only where strategies are
    inert, so they are left as they are; the plan may be applied before or after installing them."""
    if isinstance(dropout, nn.Dropout):
        dropout.dropout.shard(strategy)
