"""The operator graph of one CodeGeeX training forward, as the parallel compiler sees it.

:func:`training_graph` lists, in execution order, every operator of
``CodeGeeXWithLoss.construct`` for a full-sequence training forward (no KV cache): its kind (which
sharding rule applies), the primitive it runs (a path into the network, so the strategy is read from
the real primitive after ``apply_shard_plan``; ``None`` for Python-level operators, which MindSpore
shards with its default batch-parallel strategy), its input and output tensors, and attributes.
Reshape, Cast and StopGradient carry no strategy: Cast and StopGradient keep their input's layout
and Reshape maps it (see :mod:`codegeex_ms.parallel.validator`).

Shapes: B = global batch (micro-batch × dp), S sequence, H hidden, N heads, D = H/N, F FFN width,
V vocabulary rows, P position rows. The graph mirrors ``model/transformer.py``, ``model/codegeex.py``
and ``model/loss.py``; ``tests/test_parallel_plan.py`` checks it against the primitives a real
PyNative forward calls (names and input shapes).
"""

from dataclasses import dataclass, field
from typing import Dict, List, Optional, Tuple

DTYPE_BYTES = {"float16": 2, "float32": 4}
INPUTS = ("input_ids", "labels", "position_ids", "attention_mask", "loss_mask")


@dataclass
class Tensor:
    """A graph tensor: global shape, bytes per element, and whether it is a parameter/constant."""

    shape: Tuple[int, ...]
    itemsize: int
    param: Optional[str] = None     # parameter name (release naming) for parameters
    const: bool = False


@dataclass
class Node:
    """One operator: ``prim`` is the primitive's path in the network (None: a Python operator)."""

    name: str
    kind: str
    inputs: List[str]
    outputs: List[str]
    prim: Optional[str] = None
    attrs: Dict = field(default_factory=dict)
    layer: Optional[str] = None     # the transformer layer the operator belongs to


class Graph:
    """Nodes in execution order and the tensors they use."""

    def __init__(self):
        self.nodes: List[Node] = []
        self.tensors: Dict[str, Tensor] = {}
        self._count = 0
        self.layer: Optional[str] = None

    def tensor(self, shape, itemsize, param=None, const=False, name=None) -> str:
        self._count += 1
        name = name or f"%{self._count}"
        self.tensors[name] = Tensor(tuple(shape), itemsize, param, const)
        return name

    def op(self, name, kind, inputs, out_shape, itemsize, prim=None, **attrs) -> str:
        """Append an operator with one output; returns the output tensor's name."""
        out = self.tensor(out_shape, itemsize)
        self.nodes.append(Node(name, kind, list(inputs), [out], prim, attrs, self.layer))
        return out


class _Builder:
    def __init__(self, net, batch: int, seq: int):
        self.net, self.g = net, Graph()
        cfg = net.model.config
        self.cfg, self.b, self.s = cfg, batch, seq
        self.h, self.n, self.f, self.v = cfg.hidden_size, cfg.num_heads, cfg.ffn_hidden_size, cfg.vocab_size
        self.d = self.h // self.n
        self.c = DTYPE_BYTES[cfg.compute_dtype]
        self.p = DTYPE_BYTES[cfg.param_dtype]
        self.dropout = cfg.dropout > 0

    def cell(self, path):
        obj = self.net
        for part in path.split("."):
            obj = obj[int(part)] if part.isdigit() else getattr(obj, part)
        return obj

    def param(self, path) -> str:
        """The parameter at ``model.<release name>`` as a graph tensor named by its release name."""
        p = self.cell(path)
        name = path[len("model."):]
        if name not in self.g.tensors:
            self.g.tensor(p.shape, self.p, param=name, name=name)
        return name

    def const(self, shape=()) -> str:
        return self.g.tensor(shape, 4, const=True)

    def cast(self, path, x, itemsize) -> str:
        return self.g.op(f"{path}.cast", "Cast", [x], self.g.tensors[x].shape, itemsize)

    def reshape(self, path, x, shape, itemsize=None) -> str:
        return self.g.op(path, "Reshape", [x], shape, itemsize or self.g.tensors[x].itemsize)

    def dropout_op(self, path, x) -> str:
        """nn.Dropout: an ops.Dropout when training with p > 0, else the identity."""
        if not self.dropout:
            return x
        t = self.g.tensors[x]
        return self.g.op(f"{path}.dropout", "Unary", [x], t.shape, t.itemsize, prim=f"{path}.dropout")

    # ------------------------------------------------------------------------------ blocks

    def embedding(self, path, ids) -> str:
        table = self.param(f"{path}.weight")
        out = self.g.op(f"{path}.gather", "Gather", [table, ids], (self.b, self.s, self.h), self.p,
                        prim=f"{path}.gather", axis=0)
        return self.cast(path, out, self.c)

    def linear(self, path, x) -> str:
        cell = self.cell(path)
        if getattr(cell, "quantized", False):
            raise ValueError(f"{path}: the training graph has no W8A16 (int8) layers; validate the "
                             "training plan with model.weight_quant=none")
        rows = self.b * self.s
        x = self.reshape(f"{path}.reshape", self.cast(path, x, self.c), (rows, cell.in_features))
        w = self.cast(f"{path}.weight", self.param(f"{path}.weight"), self.c)
        y = self.g.op(f"{path}.matmul", "MatMul", [x, w], (rows, cell.out_features), self.c,
                      prim=f"{path}.matmul", transpose_b=True)
        bias = self.cast(f"{path}.bias", self.param(f"{path}.bias"), self.c)
        y = self.g.op(f"{path}.bias_add", "Arithmetic", [y, bias], (rows, cell.out_features), self.c,
                      prim=f"{path}.bias_add")
        return self.reshape(f"{path}.reshape_out", y, (self.b, self.s, cell.out_features))

    def layer_norm(self, path, x) -> str:
        x = self.cast(path + ".input", x, 4)
        w = self.cast(path + ".weight", self.param(f"{path}.weight"), 4)
        bias = self.cast(path + ".bias", self.param(f"{path}.bias"), 4)
        y = self.g.op(f"{path}.norm", "LayerNorm", [x, w, bias], self.g.tensors[x].shape, 4,
                      prim=f"{path}.norm", begin_norm_axis=-1)
        return self.cast(path, y, self.c)

    def masked_softmax(self, path, scores, mask) -> str:
        cell = self.cell(path)
        shape = self.g.tensors[scores].shape
        if cell.is_fused:
            return self.g.op(f"{path}.fused_softmax", "Custom", [scores, mask, self.const((1,))], shape,
                             self.c, prim=f"{path}.fused_softmax", codegeex_kernel="masked_softmax")
        x = self.g.op(f"{path}.mul", "Arithmetic", [self.cast(path + ".scores", scores, 4), self.const()],
                      shape, 4, prim=f"{path}.mul")
        mask4 = self.cast(path + ".mask", mask, 4)
        mshape = self.g.tensors[mask].shape
        blocked = self.g.op(f"{path}.mask_sub", "Arithmetic", [self.const(), mask4], mshape, 4,
                            prim=f"{path}.mask_sub")
        pen = self.g.op(f"{path}.penalty", "Arithmetic", [blocked, self.const()], mshape, 4,
                        prim=f"{path}.penalty")
        x = self.g.op(f"{path}.sub", "Arithmetic", [x, pen], shape, 4, prim=f"{path}.sub")
        probs = self.g.op(f"{path}.softmax", "Softmax", [x], shape, 4, prim=f"{path}.softmax", axis=-1)
        return self.cast(path, probs, self.c)

    def split_heads(self, path, x) -> str:
        x = self.reshape(f"{path}.split_heads", x, (self.b, self.s, self.n, self.d))
        return self.g.op(f"{path}.transpose", "Transpose", [x], (self.b, self.n, self.s, self.d), self.c,
                         prim=f"{path}.transpose", perm=(0, 2, 1, 3))

    def attention(self, path, q_in, kv_in, mask) -> str:
        q = self.split_heads(path, self.linear(f"{path}.query", q_in))
        k = self.split_heads(path, self.linear(f"{path}.key", kv_in))
        v = self.split_heads(path, self.linear(f"{path}.value", kv_in))
        scores = self.g.op(f"{path}.scores", "BatchMatMul", [q, k], (self.b, self.n, self.s, self.s),
                           self.c, prim=f"{path}.scores", transpose_b=True)
        probs = self.dropout_op(f"{path}.dropout", self.masked_softmax(f"{path}.softmax", scores, mask))
        ctx = self.g.op(f"{path}.context", "BatchMatMul", [probs, v], (self.b, self.n, self.s, self.d),
                        self.c, prim=f"{path}.context")
        ctx = self.g.op(f"{path}.merge_transpose", "Transpose", [ctx], (self.b, self.s, self.n, self.d),
                        self.c, prim=f"{path}.merge_transpose", perm=(0, 2, 1, 3))
        ctx = self.reshape(f"{path}.merge_heads", ctx, (self.b, self.s, self.h))
        return self.linear(f"{path}.dense", ctx)

    def mlp(self, path, x) -> str:
        y = self.linear(f"{path}.dense_h_to_4h", x)
        act = self.cell(f"{path}.activation")
        shape = self.g.tensors[y].shape
        if act.is_fused:
            y = self.g.op(f"{path}.activation.fast_gelu", "Custom", [y], shape, self.c,
                          prim=f"{path}.activation.fast_gelu", codegeex_kernel="fast_gelu")
        else:
            y = self.g.op(f"{path}.activation.fast_gelu", "Unary", [y], shape, self.c,
                          prim=f"{path}.activation.fast_gelu")
        return self.linear(f"{path}.dense_4h_to_h", y)

    def residual(self, path, attr, h, x) -> str:
        cell = self.cell(path)
        prim = f"{path}.{attr}" if hasattr(cell, attr) else None
        return self.g.op(f"{path}.{attr}", "Arithmetic", [h, x], self.g.tensors[h].shape, self.c, prim=prim)

    def transformer_layer(self, path, h, mask, query_emb=None) -> str:
        self.g.layer = path[len("model."):]
        normed = self.layer_norm(f"{path}.input_layernorm", h)
        q_in = query_emb if query_emb is not None else normed
        attn = self.dropout_op(f"{path}.attn_dropout", self.attention(f"{path}.attention", q_in, normed, mask))
        x = self.residual(path, "attn_residual", h, attn)
        y = self.mlp(f"{path}.mlp", self.layer_norm(f"{path}.post_attention_layernorm", x))
        out = self.residual(path, "mlp_residual", x, self.dropout_op(f"{path}.mlp_dropout", y))
        self.g.layer = None
        return out

    def loss(self, path, logits, labels, loss_mask) -> str:
        rows, v = self.b * self.s, self.v
        logits = self.cast(path, logits, 4)
        m = self.g.op(f"{path}.max", "ReduceMax", [logits], (rows, 1), 4, prim=f"{path}.max",
                      axis=-1, keep_dims=True, reduce="max")
        m = self.g.op(f"{path}.stop_gradient", "Cast", [m], (rows, 1), 4)
        shifted = self.g.op(f"{path}.sub", "Arithmetic", [logits, m], (rows, v), 4, prim=f"{path}.sub")
        e = self.g.op(f"{path}.exp", "Unary", [shifted], (rows, v), 4, prim=f"{path}.exp")
        se = self.g.op(f"{path}.sum_exp", "ReduceSum", [e], (rows, 1), 4, prim=f"{path}.sum_exp",
                       axis=-1, keep_dims=True)
        lse = self.g.op(f"{path}.log", "Unary", [se], (rows, 1), 4, prim=f"{path}.log")
        onehot = self.g.op(f"{path}.onehot", "OneHot", [labels, self.const(), self.const()], (rows, v), 4,
                           prim=f"{path}.onehot", depth=v)
        prod = self.g.op(f"{path}.mul", "Arithmetic", [shifted, onehot], (rows, v), 4, prim=f"{path}.mul")
        picked = self.g.op(f"{path}.pick", "ReduceSum", [prod], (rows, 1), 4, prim=f"{path}.pick",
                           axis=-1, keep_dims=True)
        per_token = self.g.op(f"{path}.lse_minus_picked", "Arithmetic", [lse, picked], (rows, 1), 4)
        per_token = self.reshape(f"{path}.flatten", per_token, (rows,))
        mask = self.cast(f"{path}.mask", loss_mask, 4)
        masked = self.g.op(f"{path}.masked", "Arithmetic", [per_token, mask], (rows,), 4)
        total = self.g.op(f"{path}.total", "ReduceSum", [masked], (), 4, axis=(0,))
        count = self.g.op(f"{path}.count", "ReduceSum", [mask], (), 4, axis=(0,))
        return self.g.op(f"{path}.mean", "Arithmetic", [total, count], (), 4)

    def build(self) -> Graph:
        g, b, s = self.g, self.b, self.s
        for name in INPUTS:
            shape = (b, s, s) if name == "attention_mask" else (b, s)
            g.tensor(shape, 4, name=name)   # int32 ids, FP32 masks
        lm = "model.language_model"
        mask = g.op(f"{lm}.expand", "ExpandDims", ["attention_mask"], (b, 1, s, s), 4,
                    prim=f"{lm}.expand", axis=1)
        emb = f"{lm}.embedding"
        words = self.embedding(f"{emb}.word_embeddings", "input_ids")
        pos = self.embedding(f"{emb}.position_embeddings", "position_ids")
        h = self.dropout_op(f"{emb}.dropout", self.residual(emb, "add", words, pos))
        query_emb = self.embedding(f"{lm}.topQueryEmbedding.top_query_embeddings", "position_ids")
        tr = f"{lm}.transformer"
        for i in range(self.cfg.num_layers):
            h = self.transformer_layer(f"{tr}.layers.{i}", h, mask)
        h = self.layer_norm(f"{tr}.final_layernorm", h)
        h = self.transformer_layer(f"{tr}.topQueryLayer", h, mask, query_emb)
        table = self.cast("model.head.table", self.param(f"{emb}.word_embeddings.weight"), self.c)
        flat = self.reshape("model.head.flatten", self.cast("model.head.input", h, self.c), (b * s, self.h))
        logits = g.op("model.head", "MatMul", [flat, table], (b * s, self.v), self.c, prim="model.head",
                      transpose_b=True)
        logits = self.reshape("model.logits", self.cast("model.logits", logits, 4), (b, s, self.v))
        logits = self.reshape("loss.flatten_logits", logits, (b * s, self.v))
        labels = self.reshape("loss.flatten_labels", "labels", (b * s,))
        loss_mask = self.reshape("loss.flatten_mask", "loss_mask", (b * s,))
        self.loss("loss", logits, labels, loss_mask)
        return g


def training_graph(net, batch: int, seq: int) -> Graph:
    """The forward graph of ``net`` (a :class:`~codegeex_ms.model.CodeGeeXWithLoss`) for a global
    batch of ``batch`` sequences of ``seq`` tokens."""
    return _Builder(net, batch, seq).build()
