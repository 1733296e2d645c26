"""Training and testing the protocol classifiers (`lgm.evaluate.classifier`): a plain PyTorch loop.

Recipe: AdamW with a one-cycle learning rate, batch 128, cross-entropy; augmentation by random
shifts (28x28 images placed anywhere within 2 pixels of the centre of the 32x32 canvas, 32x32
images shifted by up to 4 pixels with zero fill) and, where ``hflip``, random horizontal flips.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor
from tqdm.auto import tqdm

from lgm.evaluate.classifier import SIZE, Classifier


def random_shift(x: Tensor, generator: torch.Generator, hflip: bool = False) -> Tensor:
    """Random placement of each image ``[B, C, H, W]`` (uint8, H = W = 28 or 32) in a 32x32 canvas.

    28x28 images land anywhere within 2 pixels of the centre; 32x32 images move by up to 4 pixels,
    zero-filled. With ``hflip``, each image is also mirrored with probability 1/2.
    """
    b, h = x.shape[0], x.shape[-1]
    margin = (SIZE - h) // 2 if h < SIZE else 4
    canvas = F.pad(x, (margin + (SIZE - h) // 2,) * 4)
    # In the padded canvas the centred crop starts at `margin`; offsets 0..2*margin shift by -margin..margin.
    offsets = torch.randint(0, 2 * margin + 1, (b, 2), generator=generator).tolist()
    out = torch.stack([canvas[i, :, r : r + SIZE, c : c + SIZE] for i, (r, c) in enumerate(offsets)])
    if hflip:
        flip = torch.rand(b, generator=generator) < 0.5
        out[flip] = out[flip].flip(-1)
    return out


@torch.inference_mode()
def accuracy(model: Classifier, x: Tensor, y: Tensor, batch_size: int = 500, progress: bool = False) -> float:
    """Fraction of images ``x`` (uint8 ``[N, C, H, W]``) whose predicted class equals ``y`` (``[N]``)."""
    model.eval()
    correct = 0
    for i in tqdm(range(0, len(x), batch_size), desc="test", disable=not progress, leave=False):
        correct += (model(x[i : i + batch_size]).argmax(1) == y[i : i + batch_size]).sum().item()
    return correct / len(x)


def fit_classifier(
    model: Classifier,
    x: Tensor,
    y: Tensor,
    epochs: int = 10,
    batch_size: int = 128,
    lr: float = 3e-3,
    weight_decay: float = 5e-4,
    hflip: bool = False,
    seed: int = 0,
    progress: bool = True,
) -> Classifier:
    """Train ``model`` on uint8 images ``x`` ``[N, C, H, W]`` with labels ``y`` ``[N]``; returns it in eval mode."""
    generator = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    steps_per_epoch = (len(x) + batch_size - 1) // batch_size
    schedule = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=epochs * steps_per_epoch)
    for epoch in range(epochs):
        model.train()
        order = torch.randperm(len(x), generator=generator)
        bar = tqdm(range(steps_per_epoch), desc=f"epoch {epoch + 1}/{epochs}", disable=not progress)
        for step in bar:
            idx = order[step * batch_size : (step + 1) * batch_size]
            loss = F.cross_entropy(model(random_shift(x[idx], generator, hflip)), y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            schedule.step()
            if step % 50 == 0:
                bar.set_postfix(loss=f"{loss.item():.4f}")
    return model.eval()
