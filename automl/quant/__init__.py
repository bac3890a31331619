"""Fake quantization and the policy-applying engine."""

from automl.quant.engine import QuantEngine, QuantLayer, fold_batchnorm
from automl.quant.fake import act_qparams, quantize_weight, quantize_weight_ste, weight_scales

__all__ = ["QuantEngine", "QuantLayer", "act_qparams", "fold_batchnorm", "quantize_weight", "quantize_weight_ste", "weight_scales"]
