import math

import torch
import torch.nn.functional as F

from polymodal.losses import clip_loss, siglip_loss


def _features(n=6, m=0, d=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    img = F.normalize(torch.randn(n, d, generator=g), dim=-1)
    txt = F.normalize(torch.randn(n, d, generator=g), dim=-1)
    neg = F.normalize(torch.randn(m, d, generator=g), dim=-1) if m else None
    return img, txt, neg


def test_clip_loss_matches_the_formula():
    img, txt, _ = _features()
    scale = torch.tensor(math.log(10.0))
    out = clip_loss({"image_features": img, "text_features": txt, "logit_scale": scale})["contrastive_loss"]
    # Direct formula: mean over i of -log softmax, both directions.
    s = 10.0 * img @ txt.T
    i2t = -sum(s[i, i] - torch.logsumexp(s[i], 0) for i in range(6)) / 6
    t2i = -sum(s[i, i] - torch.logsumexp(s[:, i], 0) for i in range(6)) / 6
    assert torch.allclose(out, (i2t + t2i) / 2, atol=1e-5)


def test_clip_hard_negatives_are_extra_candidates_for_images_only():
    img, txt, neg = _features(n=4, m=4)
    out = clip_loss({"image_features": img, "text_features": txt, "negative_features": neg,
                     "logit_scale": torch.tensor(0.0)})["contrastive_loss"]
    s_img = img @ torch.cat([txt, neg]).T  # (4, 8)
    s_txt = txt @ img.T
    i2t = -sum(s_img[i, i] - torch.logsumexp(s_img[i], 0) for i in range(4)) / 4
    t2i = -sum(s_txt[i, i] - torch.logsumexp(s_txt[i], 0) for i in range(4)) / 4
    assert torch.allclose(out, (i2t + t2i) / 2, atol=1e-5)
    without = clip_loss({"image_features": img, "text_features": txt, "logit_scale": torch.tensor(0.0)})
    assert out > without["contrastive_loss"]  # more candidates can only make the task harder


def test_siglip_loss_matches_the_formula():
    img, txt, _ = _features(n=5)
    t, b = 3.0, -2.0
    out = siglip_loss({"image_features": img, "text_features": txt, "logit_scale": torch.tensor(math.log(t)),
                       "logit_bias": torch.tensor(b)})["sigmoid_loss"]
    total = 0.0
    for i in range(5):
        for j in range(5):
            z = 1.0 if i == j else -1.0
            total += -math.log(1 / (1 + math.exp(-z * (t * float(img[i] @ txt[j]) + b))))
    assert abs(out.item() - total / 5) < 1e-4


def test_losses_fall_when_pairs_align():
    img, txt, _ = _features()
    scale = torch.tensor(math.log(20.0))
    aligned = clip_loss({"image_features": img, "text_features": img, "logit_scale": scale})["contrastive_loss"]
    random = clip_loss({"image_features": img, "text_features": txt, "logit_scale": scale})["contrastive_loss"]
    assert aligned < random
