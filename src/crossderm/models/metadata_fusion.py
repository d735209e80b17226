"""Metadata fusion for any timm backbone: image features + a small MLP on age, sex and anatomical site.

The idea of Gessert et al. 2019 (ISIC 2019 winner) and MetaBlock (Pacheco & Krohling 2021): the metadata,
one-hot with missing indicators (:mod:`crossderm.patient`), passes a two-layer MLP whose output is
concatenated with the backbone's pooled features before the classifier. It keeps timm's small interface
(``forward_features``, ``forward_head(..., pre_logits)``, ``get_classifier``), with the metadata as a second
argument, so training, TTA, OOD scores and Grad-CAM treat it like any model. The literature's caution holds
here too: metadata can raise accuracy while rare-class recall falls, so compare macro-F1 and balanced
accuracy, not accuracy alone.
"""

from __future__ import annotations

import torch
from torch import nn

from crossderm.patient import METADATA_FEATURES


class MetadataFusion(nn.Module):
    def __init__(self, backbone: nn.Module, num_classes: int, hidden: int = 64, drop_rate: float = 0.0) -> None:
        super().__init__()
        self.backbone = backbone  # built with num_classes=0: forward_head returns its pooled features
        self.metadata_mlp = nn.Sequential(
            nn.Linear(len(METADATA_FEATURES), hidden), nn.GELU(), nn.Linear(hidden, hidden), nn.GELU()
        )
        self.num_features = getattr(backbone, "head_hidden_size", backbone.num_features) + hidden
        self.num_classes = num_classes
        self.pretrained_cfg = dict(getattr(backbone, "pretrained_cfg", {}) or {})
        self.head_drop = nn.Dropout(drop_rate)
        self.classifier = nn.Linear(self.num_features, num_classes)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.backbone.forward_features(x)

    def forward_head(self, features: torch.Tensor, metadata: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        pooled = self.backbone.forward_head(features, pre_logits=True)
        fused = self.head_drop(torch.cat([pooled, self.metadata_mlp(metadata)], dim=1))
        return fused if pre_logits else self.classifier(fused)

    def forward(self, x: torch.Tensor, metadata: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x), metadata)

    def get_classifier(self) -> nn.Module:
        return self.classifier


class WithFixedMetadata(nn.Module):
    """A single-input view of a metadata model for one image's metadata (what Grad-CAM calls)."""

    def __init__(self, model: MetadataFusion, metadata: torch.Tensor) -> None:
        super().__init__()
        self.model = model
        self.register_buffer("metadata", metadata, persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x, self.metadata.expand(len(x), -1))
