"""Model analysis: layers, shapes, MACs and channel coupling."""

from automl.analysis.graph import analyse
from automl.analysis.records import ChannelGroup, LayerInfo, ModelAnalysis, Segment

__all__ = ["ChannelGroup", "LayerInfo", "ModelAnalysis", "Segment", "analyse"]

from automl.analysis.prune import keep_masks, mask_model, prune_model  # noqa: E402

__all__ += ["keep_masks", "mask_model", "prune_model"]
