"""4-view TTA is one forward pass over the stacked views, averaging probabilities."""

from __future__ import annotations

import torch
from torch import nn

from crossderm.models.tta import predict_proba_tta, tta_outputs, tta_views


class CountingModel(nn.Module):
    """timm's small interface (forward_features, forward_head, get_classifier), counting forward passes."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[int] = []
        self.linear = nn.Linear(3 * 4 * 4, 7)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        self.calls.append(x.shape[0])
        return x.flatten(1)

    def forward_head(self, features: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        return features if pre_logits else self.linear(features)

    def get_classifier(self) -> nn.Module:
        return self.linear

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


def test_views_are_identity_and_flips() -> None:
    images = torch.arange(2 * 3 * 4 * 4, dtype=torch.float32).view(2, 3, 4, 4)
    views = tta_views(images, 4)
    assert views.shape == (8, 3, 4, 4)
    assert torch.equal(views[0:2], images)
    assert torch.equal(views[2:4], images.flip(3))
    assert torch.equal(views[4:6], images.flip(2))
    assert torch.equal(views[6:8], images.flip(2).flip(3))


def test_one_batched_forward_averaging_probabilities() -> None:
    torch.manual_seed(0)
    model = CountingModel()
    images = torch.randn(5, 3, 4, 4)
    probs = predict_proba_tta(model, images, views=4, bf16=False)
    assert model.calls == [20]
    expected = torch.stack(
        [model.linear(v.flatten(1)).softmax(1) for v in tta_views(images, 4).view(4, 5, 3, 4, 4)]
    ).mean(0)
    assert torch.allclose(probs, expected, atol=1e-6)
    assert torch.allclose(probs.sum(1), torch.ones(5))
    one = predict_proba_tta(model, images, views=1, bf16=False)
    assert torch.allclose(one, model.linear(images.flatten(1)).softmax(1), atol=1e-6)


def test_outputs_give_identity_view_logits_and_features_from_the_same_pass() -> None:
    torch.manual_seed(1)
    model = CountingModel()
    images = torch.randn(3, 3, 4, 4)
    out = tta_outputs(model, images, views=4, bf16=False)
    assert model.calls == [12]
    assert torch.allclose(out.logits, model.linear(images.flatten(1)), atol=1e-6)
    assert torch.equal(out.features, images.flatten(1))
    assert torch.allclose(out.probs, predict_proba_tta(model, images, views=4, bf16=False))


def test_metadata_is_the_same_in_every_view() -> None:
    from crossderm.models.factory import create_model

    torch.manual_seed(2)
    model = create_model("test_efficientnet", metadata=True).eval()
    images, metadata = torch.randn(2, 3, 32, 32), torch.rand(2, 12)
    probs = predict_proba_tta(model, (images, metadata), views=4, bf16=False)
    with torch.no_grad():
        expected = torch.stack([model(v, metadata).softmax(1) for v in tta_views(images, 4).view(4, 2, 3, 32, 32)])
    assert torch.allclose(probs, expected.mean(0), atol=1e-6)
