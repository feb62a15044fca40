"""ArcFace logits and the verification maths."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from animzoo.perception.identity.evaluation import equal_error_rate, verification_scores
from animzoo.perception.identity.torch_model import ArcFaceHead, arcface_logits


def test_margin_lowers_only_the_target_logit() -> None:
    torch.manual_seed(0)
    emb, weight = torch.randn(5, 8), torch.randn(4, 8)
    labels = torch.tensor([0, 1, 2, 3, 1])
    plain = arcface_logits(emb, weight, labels, scale=10.0, margin=0.0)
    margin = arcface_logits(emb, weight, labels, scale=10.0, margin=0.4)
    target = F.one_hot(labels, 4).bool()
    assert (margin[target] < plain[target]).all()
    torch.testing.assert_close(margin[~target], plain[~target])
    torch.testing.assert_close(plain, 10.0 * F.normalize(emb, dim=-1) @ F.normalize(weight, dim=-1).T)


def test_equals_a_hand_computation() -> None:
    # Embedding at 30 degrees from class 0 and 100 degrees from class 1, in the plane.
    emb = torch.tensor([[math.cos(math.radians(30)), math.sin(math.radians(30))]])
    weight = torch.tensor([[1.0, 0.0], [math.cos(math.radians(-70)), math.sin(math.radians(-70))]]) * 3.0
    s, m = 64.0, 0.5
    logits = arcface_logits(emb, weight, torch.tensor([0]), scale=s, margin=m)
    expected = torch.tensor([[s * math.cos(math.radians(30) + m), s * math.cos(math.radians(100))]])
    torch.testing.assert_close(logits, expected, atol=1e-4, rtol=1e-5)
    # Past theta = pi - m the target logit continues monotonically: s (cos theta - m sin m).
    theta = math.radians(160)  # > pi - m = 151.4 degrees
    far_emb = torch.tensor([[math.cos(theta), math.sin(theta)]])
    far = arcface_logits(far_emb, weight, torch.tensor([0]), scale=s, margin=m)
    assert abs(far[0, 0].item() - s * (math.cos(theta) - m * math.sin(m))) < 1e-3


def test_head_trains_towards_the_label() -> None:
    torch.manual_seed(0)
    head = ArcFaceHead(num_classes=3, dim=4, scale=16.0, margin=0.3)
    emb = torch.randn(6, 4, requires_grad=True)
    labels = torch.tensor([0, 1, 2, 0, 1, 2])
    F.cross_entropy(head(emb, labels), labels).backward()
    assert emb.grad is not None and head.weight.grad is not None


def test_equal_error_rate_and_verification_scores() -> None:
    scores = torch.tensor([0.9, 0.8, 0.7, 0.3, 0.2, 0.1])
    same = torch.tensor([True, True, True, False, False, False])
    eer, accuracy, threshold = equal_error_rate(scores, same)
    assert eer.item() == 0.0 and accuracy.item() == 1.0 and abs(threshold.item() - 0.7) < 1e-6
    flipped = equal_error_rate(scores, ~same)
    assert flipped[0].item() == 1.0
    emb = F.normalize(torch.tensor([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0], [0.1, 0.9]]), dim=-1)
    out = verification_scores(emb, identity=torch.tensor([0, 0, 1, 1]), clip=torch.tensor([0, 1, 2, 3]))
    assert out["cos_same"] > 0.9 and out["cos_diff"] < 0.2
    assert out["eer"].item() == 0.0 and out["verification_acc"].item() == 1.0
