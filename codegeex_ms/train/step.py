"""The loss-scaled training step as compiled graphs (one compile per input shape).

``TrainStep`` owns everything a step changes: the network's weights, the optimizer (moments,
update count), the dynamic loss scale and, with gradient accumulation, FP32 gradient
accumulators. Per optimizer step the host calls ``accumulate`` for the first ``A - 1``
micro-batches (forward + backward, gradients added to the accumulators, no communication) and
``update`` for the last one, which adds the accumulators, reduces over data-parallel ranks,
unscales by ``scale * A``, checks overflow, adjusts the scale, clips to the global norm and applies
the optimizer unless the gradients overflowed.

The global norm is taken of the scaled gradients and then unscaled (``sqrt(Σ g²) / (scale·A)``),
and unscaling and clipping are one multiply of each gradient by ``clip_factor / (scale·A)``: one
pass over the gradients fewer than unscaling first, and bit-identical to it while ``scale·A`` is
a power of two (the default), since multiplying by a power of two is exact in floating point.

Overflow check: on CPU, whether that norm is finite (the square sum is Inf/NaN iff a gradient is,
or, harmlessly, when it exceeds the FP32 range, which lowers the scale as an overflow would), so
the check costs no pass of its own. Elsewhere :func:`mindspore.amp.all_finite`, which on Ascend
reads the native overflow status (FP16 there may saturate instead of producing Inf). The scale
follows :class:`mindspore.amp.DynamicLossScaler` (``*factor`` after ``window`` finite steps in a
row, ``/factor`` (floor 1) on overflow).

Semi-auto parallel (rules in :mod:`codegeex_ms.parallel.reduction`): this part of the step sees
each device's local gradient slices, so

- the global norm is computed with the square-sum pattern of MindSpore's own
  ``ops.clip_by_global_norm`` / mindformers' ``ClipGradNorm``: ``ReduceSum(Square(g))`` then
  ``ExpandDims`` carrying the ``grad_scale`` attribute, ``AddN``, ``Sqrt``. MindSpore's parallel
  pass (``HandleGlobalNormScale``) recognises it, divides each parameter's square sum by the size
  of its gradient's mirror group (the devices holding the same slice, so replicated parameters are
  not counted several times) and inserts an AllReduce(SUM) over all devices before the ``Sqrt``.
  Chosen over a hand-written reduction because the divisor comes from the layouts the compiler
  actually built (including which tensors the parallel optimizer really splits, which depends on
  its size threshold), and over calling ``ops.clip_by_global_norm`` because that does not return
  the norm we log and is deprecated after 2.9. The chain from the backward's gradient to the
  square sum may contain only Cast/Mul (true here with ``grad_accumulation = 1``, which
  ``init_topology`` requires under semi-auto). Without a parallel pass (standalone, DATA_PARALLEL)
  the attribute does nothing.
- the overflow flag is all-reduced (SUM of 0/1 over all devices, overflow when > 0) exactly as
  ``nn.TrainOneStepWithLossScaleCell`` does, so every device skips or applies the same step and
  the loss scales stay equal. That cell itself cannot be used: its CPU overflow check is broken
  (MINDSPORE_NOTES.md) and it has no place for gradient accumulation.
"""

import mindspore as ms
from mindspore import Parameter, Tensor, nn, ops
from mindspore.amp import DynamicLossScaler, all_finite

from codegeex_ms.parallel.reduction import optimizer_reductions

# The attribute is the marker MindSpore's global-norm pass looks for (see the module docstring).
GRAD_SCALE_EXPAND = ops.ExpandDims().add_prim_attr("grad_scale", True)
_square_sum = ops.MultitypeFuncGraph("square_sum")
_mul = ops.MultitypeFuncGraph("mul")
_add = ops.MultitypeFuncGraph("add")
_assign_add = ops.MultitypeFuncGraph("assign_add")
_zero = ops.MultitypeFuncGraph("zero")


@_square_sum.register("Tensor")
def _square_sum_fn(g):
    """``[1]`` FP32: the local sum of squares of ``g``, in MindSpore's global-norm pattern."""
    g = ops.cast(g, ms.float32)
    return GRAD_SCALE_EXPAND(ops.reduce_sum(ops.square(g)), 0)


@_mul.register("Tensor", "Tensor")
def _mul_fn(factor, g):
    return g * ops.cast(factor, g.dtype)


@_add.register("Tensor", "Tensor")
def _add_fn(g, acc):
    return ops.cast(g, ms.float32) + acc


@_assign_add.register("Tensor", "Tensor")
def _assign_add_fn(acc, g):
    return ops.assign_add(acc, ops.cast(g, acc.dtype))


@_zero.register("Tensor")
def _zero_fn(acc):
    return ops.assign(acc, ops.zeros_like(acc))


class ScaledGrads(nn.Cell):
    """``construct(scale, *batch)`` → ``(loss, grads of scale·loss w.r.t. weights)``."""

    def __init__(self, network, weights):
        super().__init__(auto_prefix=False)
        self.network = network
        self.weights = weights
        self.grad = ops.GradOperation(get_by_list=True, sens_param=True)

    def construct(self, scale, input_ids, labels, position_ids, attention_mask, loss_mask):
        loss = self.network(input_ids, labels, position_ids, attention_mask, loss_mask)
        sens = ops.cast(scale, loss.dtype)
        grads = self.grad(self.network, self.weights)(input_ids, labels, position_ids,
                                                       attention_mask, loss_mask, sens)
        return loss, grads


class _Accumulate(nn.Cell):
    """Graph: forward + backward of one micro-batch; gradients and loss added to the buffers."""

    def __init__(self, state):
        super().__init__(auto_prefix=False)
        self.state = state
        self.hyper_map = ops.HyperMap()

    def construct(self, input_ids, labels, position_ids, attention_mask, loss_mask):
        s = self.state
        loss, grads = s.scaled_grads(s.scale_value, input_ids, labels, position_ids,
                                     attention_mask, loss_mask)
        done = self.hyper_map(_assign_add, s.accum_grads, grads)
        loss = ops.depend(loss, done)
        return ops.depend(loss, ops.assign_add(s.loss_sum, loss))


class _Update(nn.Cell):
    """Graph: last micro-batch, reduction, unscale, overflow check, clip, optimizer update.

    Returns ``(mean loss, finite, scale used, grad norm, lr)``; the grad norm is that of the
    unscaled, reduced gradients before clipping.
    """

    def __init__(self, state):
        super().__init__(auto_prefix=False)
        self.state = state
        self.hyper_map = ops.HyperMap()
        self.accumulate = state.accum_steps > 1
        self.inv_accum = 1.0 / state.accum_steps
        self.reduce = state.reducer is not None
        if self.reduce:
            self.allreduce = ops.AllReduce()
            self.inv_ranks = 1.0 / state.num_ranks
        self.norm_overflow_check = ms.get_context("device_target") == "CPU"
        self.reduce_overflow = state.reductions.overflow
        if self.reduce_overflow:
            self.overflow_allreduce = ops.AllReduce()

    def construct(self, input_ids, labels, position_ids, attention_mask, loss_mask):
        s = self.state
        scale = s.scale_value * 1.0
        loss, grads = s.scaled_grads(scale, input_ids, labels, position_ids, attention_mask, loss_mask)
        if self.accumulate:
            grads = self.hyper_map(_add, grads, s.accum_grads)
            loss = (loss + s.loss_sum) * self.inv_accum
        if self.reduce:
            grads = s.reducer(grads)
            loss = self.allreduce(loss) * self.inv_ranks
        unscale = ops.reciprocal(scale * s.accum_steps)
        norm = ops.reshape(ops.sqrt(ops.addn(self.hyper_map(_square_sum, grads))), ()) * unscale
        finite = ops.isfinite(norm) if self.norm_overflow_check else all_finite(grads)
        if self.reduce_overflow:
            overflow = self.overflow_allreduce(ops.cast(ops.logical_not(finite), ms.float32))
            finite = ops.equal(overflow, 0.0)
        s.scaler.adjust(finite)
        factor = s.clip_norm / ops.maximum(norm, s.clip_norm)
        grads = self.hyper_map(ops.partial(_mul, unscale * factor), grads)
        lr = s.optimizer.get_lr()
        if finite:
            loss = ops.depend(loss, s.optimizer(grads))
        if self.accumulate:
            loss = ops.depend(loss, self.hyper_map(_zero, s.accum_grads))
            loss = ops.depend(loss, ops.assign(s.loss_sum, ops.zeros_like(s.loss_sum)))
        return loss, finite, scale, norm, lr


class TrainState(nn.Cell):
    """Everything a training step reads or changes, as one Cell (its parameters are what a
    training checkpoint holds): ``network`` (loss Cell), ``optimizer``, loss scale and counter,
    gradient accumulators (only when ``accum_steps > 1``)."""

    def __init__(self, network, optimizer, train):
        super().__init__(auto_prefix=False)
        self.network = network
        self.optimizer = optimizer
        self.weights = optimizer.parameters
        self.accum_steps = train.grad_accumulation
        self.clip_norm = float(train.grad_clip)
        self.scaler = DynamicLossScaler(train.loss_scale, int(train.loss_scale_factor),
                                        train.loss_scale_window)
        self.scale_value = self.scaler.scale_value
        self.scale_value.name = "loss_scale.value"
        self.scale_counter = self.scaler.counter
        self.scale_counter.name = "loss_scale.good_steps"
        if self.accum_steps > 1:
            self.accum_grads = self.weights.clone(prefix="accum_grad", init="zeros")
            self.loss_sum = Parameter(Tensor(0.0, ms.float32), name="accum_loss", requires_grad=False)
        self.scaled_grads = ScaledGrads(network, self.weights)
        self.reducer = None
        self.num_ranks = 1
        self.reductions = optimizer_reductions(ms.get_auto_parallel_context("parallel_mode"))
        if ms.get_auto_parallel_context("parallel_mode") == ms.ParallelMode.DATA_PARALLEL:
            self.num_ranks = ms.get_auto_parallel_context("device_num")
            self.reducer = nn.DistributedGradReducer(
                self.weights, ms.get_auto_parallel_context("gradients_mean"), self.num_ranks)


class TrainStep:
    """Host-side driver of the two step graphs over one :class:`TrainState`."""

    def __init__(self, network, optimizer, train):
        self.state = TrainState(network, optimizer, train)
        self.accum_steps = self.state.accum_steps
        self._accumulate = _Accumulate(self.state) if self.accum_steps > 1 else None
        self._update = _Update(self.state)
        for cell in (self._accumulate, self._update):
            if cell is not None:
                cell.set_train(True)

    def accumulate(self, batch: tuple):
        """One non-final micro-batch; returns its loss (FP32 scalar Tensor)."""
        return self._accumulate(*batch)

    def update(self, batch: tuple):
        """The final micro-batch of a step; returns ``(loss, finite, scale, grad_norm, lr)``."""
        return self._update(*batch)
