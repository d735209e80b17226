"""4-view TTA is one forward pass over the stacked views, averaging probabilities."""

from __future__ import annotations

import torch
from torch import nn

from crossderm.models.tta import predict_proba_tta, tta_views


class CountingModel(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.calls: list[int] = []
        self.linear = nn.Linear(3 * 4 * 4, 7)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls.append(x.shape[0])
        return self.linear(x.flatten(1))


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
