"""Face verification on unseen identities: cosine similarities, EER and verification accuracy."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor
from torchmetrics import Metric

from animzoo.perception.landmarks.evaluation import video_key

__all__ = ["IdentityVerificationMetric", "equal_error_rate", "verification_scores"]


def equal_error_rate(scores: Tensor, same: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """EER and the best balanced verification accuracy of similarity ``scores`` (``N``) with
    labels ``same`` (``N`` bool: the pair shows one identity).

    Returns:
        ``(eer, accuracy, threshold)``: the error rate where false accepts = false rejects; the
        best ``(TPR + TNR) / 2`` over thresholds, and the threshold giving it.
    """
    order = torch.argsort(scores, descending=True)
    s, y = scores[order], same[order].double()
    positives, negatives = y.sum().clamp(min=1), (1 - y).sum().clamp(min=1)
    tpr = torch.cumsum(y, 0) / positives        # accept everything scoring >= s[i]
    fpr = torch.cumsum(1 - y, 0) / negatives
    fnr = 1 - tpr
    i = torch.argmin((fpr - fnr).abs())
    eer = 0.5 * (fpr[i] + fnr[i])
    balanced = 0.5 * (tpr + 1 - fpr)
    j = torch.argmax(balanced)
    return eer.float(), balanced[j].float(), s[j].float()


def verification_scores(embeddings: Tensor, identity: Tensor, clip: Tensor) -> dict[str, Tensor]:
    """Pairwise verification over frames.

    Args:
        embeddings: ``N x D`` L2-normalised.
        identity: ``N`` identity keys; clip: ``N`` video keys.

    Returns:
        ``cos_same`` (mean cosine of same-identity pairs from DIFFERENT clips: other background
        and light), ``cos_same_clip`` (same clip), ``cos_diff`` (different identities), ``eer``,
        ``verification_acc`` (best balanced accuracy, same identity/other clip vs different
        identity) and ``threshold``.
    """
    cosine = embeddings @ embeddings.T
    upper = torch.triu(torch.ones_like(cosine, dtype=torch.bool), diagonal=1)
    same_id = identity[:, None] == identity[None, :]
    same_clip = clip[:, None] == clip[None, :]
    positive = upper & same_id & ~same_clip
    negative = upper & ~same_id
    nan = torch.tensor(float("nan"), device=embeddings.device)
    out = {
        "cos_same": cosine[positive].mean() if positive.any() else nan,
        "cos_same_clip": cosine[upper & same_clip].mean() if (upper & same_clip).any() else nan,
        "cos_diff": cosine[negative].mean() if negative.any() else nan,
    }
    if positive.any() and negative.any():
        scores = torch.cat([cosine[positive], cosine[negative]])
        labels = torch.cat([torch.ones(int(positive.sum()), dtype=torch.bool, device=scores.device),
                            torch.zeros(int(negative.sum()), dtype=torch.bool, device=scores.device)])
        out["eer"], out["verification_acc"], out["threshold"] = equal_error_rate(scores, labels)
    else:
        out["eer"] = out["verification_acc"] = out["threshold"] = nan
    return out


class IdentityVerificationMetric(Metric):
    """Collects per-frame embeddings with (video, frame) keys and identities; ``compute`` gives
    :func:`verification_scores` over every ``every``-th frame of each video (de-duplicated)."""

    full_state_update = False

    def __init__(self, every: int = 4, **kwargs: object) -> None:
        super().__init__(**kwargs)
        self.every = int(every)
        self.add_state("keys", default=[], dist_reduce_fx="cat")  # N x 3: video, frame, identity
        self.add_state("embeddings", default=[], dist_reduce_fx="cat")

    def update(self, embeddings: Tensor, video_id: Sequence[str], identity: Sequence[str],
               frame_index: Tensor) -> None:
        frames = frame_index.reshape(-1).long()
        keep = frames % self.every == 0
        if not bool(keep.any()):
            return
        keys = torch.tensor([[video_key(v), 0, video_key(i)] for v, i in zip(video_id, identity)], dtype=torch.long)
        keys[:, 1] = frames.cpu()
        self.keys.append(keys[keep.cpu()].to(self.device))
        self.embeddings.append(embeddings.detach().float()[keep])

    def compute(self) -> dict[str, Tensor]:
        if not self.keys:
            nan = torch.tensor(float("nan"), device=self.device)
            return dict.fromkeys(("cos_same", "cos_same_clip", "cos_diff", "eer", "verification_acc", "threshold"), nan)
        keys = torch.cat(self.keys) if isinstance(self.keys, list) else self.keys
        emb = torch.cat(self.embeddings) if isinstance(self.embeddings, list) else self.embeddings
        unique, inverse = torch.unique(keys[:, :2], dim=0, return_inverse=True)
        first = torch.full((unique.shape[0],), keys.shape[0], dtype=torch.long, device=keys.device)
        first = first.scatter_reduce(0, inverse, torch.arange(keys.shape[0], device=keys.device), reduce="amin")
        keys, emb = keys[first], emb[first]
        return verification_scores(emb, keys[:, 2], keys[:, 0])
