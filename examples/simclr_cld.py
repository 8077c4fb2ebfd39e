"""SimCLR + CLD in a plain PyTorch loop (no Lightning, no crosslevel training code): the CLD term is
one module, ``CrossLevelLoss``, added to any instance loss in three lines (marked ``# CLD``).

Trains a small CNN on scikit-learn's 8×8 digits (built in, no download) for ``--steps`` steps, then
prints the kNN top-1 of its features on held-out digits, with and without the CLD term if asked:

    python examples/simclr_cld.py               # SimCLR + CLD
    python examples/simclr_cld.py --weight 0    # SimCLR alone
"""

from __future__ import annotations

import argparse

import torch
import torch.nn.functional as F
from sklearn.datasets import load_digits
from torch import nn
from torchvision.transforms import v2

from crosslevel.evaluation import knn_scores
from crosslevel.losses import CrossLevelLoss, nt_xent_loss


VIEW = v2.Compose([
    v2.RandomAffine(degrees=12, translate=(0.12, 0.12), scale=(0.8, 1.1), shear=8),
    v2.RandomResizedCrop(8, scale=(0.6, 1.0), ratio=(0.8, 1.25), antialias=True),
])


def augment(images: torch.Tensor) -> torch.Tensor:
    """A random view of each of B×1×8×8 digits: a small affine warp and crop (no flip: digits are not
    mirror-symmetric)."""
    return torch.stack([VIEW(image) for image in images])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--weight", type=float, default=1.0, help="λ of the CLD term (0: SimCLR alone)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.manual_seed(args.seed)
    digits = load_digits()
    images, labels = torch.tensor(digits.images, dtype=torch.float32)[:, None] / 16, torch.tensor(digits.target)
    train, test = torch.arange(len(images)) % 5 != 0, torch.arange(len(images)) % 5 == 0

    encoder = nn.Sequential(nn.Conv2d(1, 32, 3, padding=1), nn.ReLU(), nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(),
                            nn.AdaptiveAvgPool2d(2), nn.Flatten(), nn.Linear(256, 128))
    instance_head, group_head = nn.Linear(128, 64), nn.Linear(128, 64)
    cld = CrossLevelLoss(num_groups=10, temperature=0.2)  # CLD: k groups per view, T_G
    parameters = [*encoder.parameters(), *instance_head.parameters(), *group_head.parameters()]
    optimizer = torch.optim.SGD(parameters, lr=0.05, momentum=0.9, weight_decay=5e-4)

    print(f"kNN top-1 of the untrained encoder: {knn_top1(encoder, images, labels, train, test):.2f}%")
    pool = images[train]
    for step in range(args.steps):
        batch = pool[torch.randint(len(pool), (128,))]
        f_a, f_b = encoder(augment(batch)), encoder(augment(batch))
        loss = nt_xent_loss(F.normalize(instance_head(f_a), dim=1), F.normalize(instance_head(f_b), dim=1), 0.2)
        group_a, group_b = F.normalize(group_head(f_a), dim=1), F.normalize(group_head(f_b), dim=1)  # CLD
        loss = loss + args.weight * cld(group_a, group_b)  # CLD
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if step % 100 == 0 or step == args.steps - 1:
            print(f"step {step:4d}  loss {loss.item():.3f}")

    print(f"kNN top-1 on held-out digits: {knn_top1(encoder, images, labels, train, test):.2f}%  (λ = {args.weight}, {args.steps} steps)")


def knn_top1(encoder: nn.Module, images: torch.Tensor, labels: torch.Tensor, train: torch.Tensor, test: torch.Tensor) -> float:
    """Top-1 (%) of a 20-neighbour cosine kNN on the encoder's features, training digits as support."""
    encoder.eval()
    with torch.no_grad():
        features = F.normalize(encoder(images), dim=1)
    encoder.train()
    scores = knn_scores(features[train], labels[train], features[test], k=20, temperature=0.1)
    return 100 * (scores.argmax(dim=1) == labels[test]).float().mean().item()


if __name__ == "__main__":
    main()
