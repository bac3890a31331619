"""Rewrite a network into modules that the analysis, the quantizer and the exporter all understand.

Some modules hide their arithmetic from ``torch.fx``: ``nn.MultiheadAttention`` keeps its input
projection as a bare parameter and calls one fused function, ``nn.TransformerEncoderLayer`` is a
leaf module of the tracer, a training-only module (``StochasticDepth``, ``DropPath``) calls a
function an export file cannot name, and timm's ``BatchNormAct2d`` is a BatchNorm that runs its own
``F.batch_norm``. :func:`canonical_model` returns a copy of the model in which each of them is
replaced by an equivalent of plain ``torch.nn`` parts (eval mode), so their Linear layers are
quantized and pruned like any other, their parameters are priced and the exported files hold them.
The original model is never modified; a model with nothing to rewrite is returned as it is.

Modules that are the identity in eval mode are listed by class; a user registers their own with
:func:`register_eval_identity`::

    >>> from automl.analysis import register_eval_identity
    >>> class MyDropout(nn.Module):
    ...     def forward(self, x):
    ...         return x * torch.bernoulli(torch.full_like(x, 0.9)) / 0.9 if self.training else x
    >>> register_eval_identity(MyDropout)
"""

from __future__ import annotations

import copy
import itertools
import math
from collections import OrderedDict
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from automl.errors import AnalysisError

# Classes of other libraries by qualified name, so that neither has to be importable.
_EVAL_IDENTITY_NAMES = {
    "torchvision.ops.stochastic_depth.StochasticDepth",
    "timm.layers.drop.DropPath",
    "timm.layers.drop.DropBlock2d",
}
_EVAL_IDENTITY: set[type] = {
    nn.Identity, nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.AlphaDropout, nn.FeatureAlphaDropout,
}
EQUIVALENCE_TOL = 1e-4  # relative to the output's largest magnitude


def _qualname(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


def register_eval_identity(cls: type[nn.Module]) -> type[nn.Module]:
    """Declare that modules of class ``cls`` return their input unchanged in eval mode.

    Analysis, pricing and export then treat them as absent (they are replaced by ``nn.Identity``
    in the analysed copy). Returns ``cls``, so it also works as a class decorator. Wrong
    declarations are caught: :func:`canonical_model` checks that the rewritten network computes
    what the original does.
    """
    if not (isinstance(cls, type) and issubclass(cls, nn.Module)):
        raise AnalysisError(f"register_eval_identity expects a torch.nn.Module subclass, got {cls!r}. Pass the class "
                            "itself (not an instance) of a module whose eval-mode forward returns its input.")
    _EVAL_IDENTITY.add(cls)
    return cls


def is_eval_identity(module: nn.Module) -> bool:
    """Whether ``module`` is declared to be the identity in eval mode (built-in or registered)."""
    return type(module) in _EVAL_IDENTITY or _qualname(type(module)) in _EVAL_IDENTITY_NAMES


def attention_softmax(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None,
                      scale: float) -> tuple[torch.Tensor, torch.Tensor]:
    """``softmax(q k^T * scale + mask) v`` and the attention weights, in ops every exporter knows."""
    scores = torch.matmul(q, k.transpose(-2, -1)) * scale
    if mask is not None:
        scores = scores + mask
    weights = torch.softmax(scores, dim=-1)
    return torch.matmul(weights, v), weights


def _float_mask(mask: torch.Tensor | None, like: torch.Tensor) -> torch.Tensor | None:
    """A boolean mask (True = masked out, as in ``nn.MultiheadAttention``) as an additive float mask."""
    if mask is None or mask.is_floating_point():
        return mask
    return torch.zeros(mask.shape, dtype=like.dtype).masked_fill(mask, float("-inf"))


class Attention(nn.Module):
    """``nn.MultiheadAttention`` in eval mode as four ``nn.Linear`` layers around scaled dot products.

    ``q_proj``, ``k_proj`` and ``v_proj`` hold the rows of the original ``in_proj_weight`` (or of the
    separate ``q/k/v_proj_weight``), ``out_proj`` the output projection; ``forward`` takes the
    arguments of ``nn.MultiheadAttention.forward`` and returns ``(output, weights or None)``.
    """

    def __init__(self, mha: nn.MultiheadAttention) -> None:
        super().__init__()
        if mha.bias_k is not None or mha.add_zero_attn:
            raise AnalysisError("nn.MultiheadAttention with add_bias_kv=True or add_zero_attn=True is not supported: "
                                "expected the default attention. Build the model without them to search it.")
        e, heads = mha.embed_dim, mha.num_heads
        self.num_heads, self.head_dim, self.batch_first = heads, e // heads, mha.batch_first
        bias = mha.in_proj_bias is not None
        self.q_proj, self.k_proj, self.v_proj = nn.Linear(e, e, bias), nn.Linear(mha.kdim, e, bias), nn.Linear(mha.vdim, e, bias)
        with torch.no_grad():
            if mha.in_proj_weight is not None:
                weights = mha.in_proj_weight.chunk(3)
            else:
                weights = (mha.q_proj_weight, mha.k_proj_weight, mha.v_proj_weight)
            biases = mha.in_proj_bias.chunk(3) if bias else (None,) * 3
            for proj, w, b in zip((self.q_proj, self.k_proj, self.v_proj), weights, biases, strict=True):
                proj.weight.copy_(w)
                if b is not None:
                    proj.bias.copy_(b)
        out = mha.out_proj
        self.out_proj = nn.Linear(e, e, out.bias is not None)
        self.out_proj.load_state_dict(out.state_dict())

    def _heads(self, x: torch.Tensor) -> torch.Tensor:
        return x.reshape(x.shape[0], x.shape[1], self.num_heads, self.head_dim).transpose(1, 2)

    def forward(self, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                key_padding_mask: torch.Tensor | None = None, need_weights: bool = True,
                attn_mask: torch.Tensor | None = None, average_attn_weights: bool = True,
                is_causal: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
        if not self.batch_first:
            query, key, value = query.transpose(0, 1), key.transpose(0, 1), value.transpose(0, 1)
        q, k, v = self._heads(self.q_proj(query)), self._heads(self.k_proj(key)), self._heads(self.v_proj(value))
        mask = _float_mask(attn_mask, q)
        if is_causal and mask is None:
            n = q.shape[2]
            mask = torch.triu(torch.full((n, n), float("-inf")), diagonal=1)
        if key_padding_mask is not None:
            pad = _float_mask(key_padding_mask, q)[:, None, None, :]  # type: ignore[index]
            mask = pad if mask is None else mask + pad
        if need_weights:
            out, weights = attention_softmax(q, k, v, mask, 1.0 / math.sqrt(self.head_dim))
        else:
            out, weights = F.scaled_dot_product_attention(q, k, v, attn_mask=mask), None
        out = self.out_proj(out.transpose(1, 2).flatten(2))
        if not self.batch_first:
            out = out.transpose(0, 1)
        if weights is not None and average_attn_weights:
            weights = weights.mean(dim=1)
        return out, weights


class EncoderLayer(nn.Module):
    """``nn.TransformerEncoderLayer`` in eval mode, traceable: its parts keep their names."""

    def __init__(self, layer: nn.TransformerEncoderLayer) -> None:
        super().__init__()
        for name, child in layer.named_children():
            self.add_module(name, child)
        self.norm_first = layer.norm_first
        if not isinstance(layer.activation, nn.Module):
            self.activation_fn: Callable[[torch.Tensor], torch.Tensor] = layer.activation

    def _act(self, x: torch.Tensor) -> torch.Tensor:
        return self.activation(x) if "activation" in self._modules else self.activation_fn(x)

    def _attend(self, x: torch.Tensor, mask: torch.Tensor | None, padding: torch.Tensor | None, causal: bool) -> torch.Tensor:
        out = self.self_attn(x, x, x, attn_mask=mask, key_padding_mask=padding, need_weights=False, is_causal=causal)[0]
        return self.dropout1(out)

    def _feed_forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout2(self.linear2(self.dropout(self._act(self.linear1(x)))))

    def forward(self, src: torch.Tensor, src_mask: torch.Tensor | None = None,
                src_key_padding_mask: torch.Tensor | None = None, is_causal: bool = False) -> torch.Tensor:
        x = src
        if self.norm_first:
            x = x + self._attend(self.norm1(x), src_mask, src_key_padding_mask, is_causal)
            return x + self._feed_forward(self.norm2(x))
        x = self.norm1(x + self._attend(x, src_mask, src_key_padding_mask, is_causal))
        return self.norm2(x + self._feed_forward(x))


class Encoder(nn.Module):
    """``nn.TransformerEncoder`` in eval mode, traceable (its layers and final norm keep their names)."""

    def __init__(self, encoder: nn.TransformerEncoder) -> None:
        super().__init__()
        self.layers = encoder.layers
        self.norm = encoder.norm

    def forward(self, src: torch.Tensor, mask: torch.Tensor | None = None,
                src_key_padding_mask: torch.Tensor | None = None, is_causal: bool | None = None) -> torch.Tensor:
        out = src
        for layer in self.layers:
            out = layer(out, src_mask=mask, src_key_padding_mask=src_key_padding_mask, is_causal=bool(is_causal))
        return self.norm(out) if self.norm is not None else out


def _batchnorm_act(module: nn.Module) -> nn.Module:
    """timm's ``BatchNormAct2d`` (a BatchNorm that runs its own ``F.batch_norm``) as BatchNorm, drop, act."""
    bn = nn.BatchNorm2d(module.num_features, module.eps, module.momentum, module.affine, module.track_running_stats)
    bn.load_state_dict(module.state_dict(), strict=False)
    parts = OrderedDict([("bn", bn)])
    for name in ("drop", "act"):
        if name in module._modules:
            parts[name] = module._modules[name]
    return nn.Sequential(parts)


def _linear(module: nn.Module) -> nn.Module:
    """timm's ``Linear`` (an ``nn.Linear`` that calls ``F.linear`` itself) as the ``nn.Linear`` it is."""
    layer = nn.Linear(module.in_features, module.out_features, module.bias is not None)
    layer.load_state_dict(module.state_dict())
    return layer


_REWRITES: dict[str, Callable[[nn.Module], nn.Module]] = {
    "timm.layers.linear.Linear": _linear,
    _qualname(nn.MultiheadAttention): Attention,
    _qualname(nn.TransformerEncoderLayer): EncoderLayer,
    _qualname(nn.TransformerEncoder): Encoder,
    "timm.layers.norm_act.BatchNormAct2d": _batchnorm_act,
}


def _rewrite(module: nn.Module, path: str, done: list[str]) -> nn.Module:
    for name, child in list(module.named_children()):
        new = _rewrite(child, f"{path}{name}.", done)
        if new is not child:
            setattr(module, name, new)
    if path and is_eval_identity(module) and type(module) is not nn.Identity:
        done.append(f"{path[:-1]} ({type(module).__name__} -> Identity)")
        return nn.Identity()
    rule = _REWRITES.get(_qualname(type(module)))
    if rule is None:
        return module
    done.append(f"{path[:-1] or 'model'} ({type(module).__name__})")
    where = next(itertools.chain(module.parameters(), module.buffers()), None)  # new layers go where it lies
    rewritten = rule(module).train(module.training)
    return rewritten.to(where.device) if where is not None else rewritten


def _needs_rewrite(model: nn.Module) -> bool:
    return any((is_eval_identity(m) and type(m) is not nn.Identity) or _qualname(type(m)) in _REWRITES
               for m in model.modules())


def canonical_model(model: nn.Module, sample_input: torch.Tensor) -> nn.Module:
    """``model`` with attention, transformer layers, eval-identity and norm+activation modules rewritten.

    Returns ``model`` itself when nothing needs rewriting, otherwise an eval-mode copy that computes
    the same outputs on ``sample_input`` (checked; :class:`AnalysisError` names the rewritten modules
    when it does not, e.g. after a wrong :func:`register_eval_identity`).
    """
    if not _needs_rewrite(model):
        return model
    was_training = model.training
    model.eval()
    try:
        new = copy.deepcopy(model)
        done: list[str] = []
        new = _rewrite(new, "", done).eval()
        with torch.no_grad():
            expected, got = model(sample_input), new(sample_input)
    finally:
        model.train(was_training)
    if isinstance(expected, torch.Tensor) and isinstance(got, torch.Tensor):
        scale = float(expected.abs().max()) or 1.0
        diff = float((expected - got).abs().max()) if expected.shape == got.shape else math.inf
        if not diff <= EQUIVALENCE_TOL * scale:
            raise AnalysisError(
                f"the rewritten network computes something else than {type(model).__name__} (largest output difference "
                f"{diff:.3g}, expected at most {EQUIVALENCE_TOL * scale:.3g}) after replacing: {', '.join(done)}. A module "
                "registered with register_eval_identity must return its input unchanged in eval mode; otherwise "
                "report the model."
            )
    return new
