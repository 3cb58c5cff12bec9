"""DCGAN generator and discriminator (Radford et al., 2016).

Pure ``nn.Module`` definitions parameterised by resolution, image channels,
latent size and width. At 64x64 with ``z_dim=100`` and width 64 they match the
PyTorch DCGAN example exactly, except that the discriminator returns logits
(no sigmoid) so the loss can use the numerically stable BCE-with-logits form.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import Tensor, nn
from torch.nn.utils.parametrizations import spectral_norm

if TYPE_CHECKING:
    from .config import ModelCfg

# Normalisation layers D may use after each hidden conv ("layer" is LayerNorm over C x H x W).
D_NORMS = ("batch", "layer", "none")

# Resolutions reachable as base * 2**n_up, quoted in the error for unsupported ones.
SUPPORTED_EXAMPLES = (28, 32, 48, 56, 64, 96, 112, 128, 192, 256)


def stage_plan(resolution: int) -> tuple[int, int]:
    """Split ``resolution`` into ``(base, n_up)`` with ``resolution == base * 2**n_up``.

    ``base`` is the spatial size after the first (kernel=base) layer and lies in
    4..7; ``n_up >= 2`` is the number of stride-2 layers. Examples: 28 -> (7, 2),
    32 -> (4, 3), 48 -> (6, 3), 64 -> (4, 4), 128 -> (4, 5), 256 -> (4, 6).

    Raises:
        ValueError: if ``resolution`` has no such decomposition (including
            every resolution below 16).
    """
    if isinstance(resolution, int) and resolution >= 16:
        for base in range(4, 8):
            quotient, remainder = divmod(resolution, base)
            # Power of two >= 4 means at least two stride-2 stages.
            if remainder == 0 and quotient >= 4 and quotient & (quotient - 1) == 0:
                return base, quotient.bit_length() - 1
    examples = ", ".join(str(r) for r in SUPPORTED_EXAMPLES)
    raise ValueError(
        f"unsupported resolution {resolution!r}: it must be base * 2**k with base in 4..7 "
        f"and k >= 2 (so at least 16); supported examples: {examples}"
    )


def init_weights(module: nn.Module) -> None:
    """Radford init: conv / conv-transpose weights ~ N(0, 0.02); BatchNorm weight ~ N(1, 0.02), bias 0.

    Apply with ``model.apply(init_weights)``. Draws only from torch's global RNG,
    in module-traversal order, so a fixed seed reproduces the same weights.
    """
    if isinstance(module, (nn.Conv2d, nn.ConvTranspose2d)):
        nn.init.normal_(module.weight, 0.0, 0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.BatchNorm2d):
        nn.init.normal_(module.weight, 1.0, 0.02)
        nn.init.zeros_(module.bias)


class Generator(nn.Module):
    """Maps latent vectors (and, when conditional, class labels) to images in [-1, 1].

    A kernel=base transposed conv lifts z to a base x base map, then stride-2
    transposed convs double the size while halving the channels; BN + ReLU
    everywhere except the Tanh output layer (as in the paper). A conditional
    generator (``num_classes > 0``) reads ``[z, one_hot(label)]``, as in Mirza &
    Osindero's conditional GAN.
    """

    def __init__(
        self,
        resolution: int = 64,
        channels: int = 3,
        z_dim: int = 100,
        width: int = 64,
        max_channels: int = 1024,
        num_classes: int = 0,
    ) -> None:
        super().__init__()
        base, n_up = stage_plan(resolution)
        self.resolution, self.channels, self.z_dim, self.num_classes = resolution, channels, z_dim, num_classes
        # Widest first: stage i has width * 2**(n_up-1-i) channels, the last one `width`.
        widths = [min(width * 2 ** (n_up - 1 - i), max_channels) for i in range(n_up)]

        layers: list[nn.Module] = [
            nn.ConvTranspose2d(z_dim + num_classes, widths[0], base, 1, 0, bias=False),
            nn.BatchNorm2d(widths[0]),
            nn.ReLU(True),
        ]
        for c_in, c_out in zip(widths[:-1], widths[1:]):
            layers += [
                nn.ConvTranspose2d(c_in, c_out, 4, 2, 1, bias=False),
                nn.BatchNorm2d(c_out),
                nn.ReLU(True),
            ]
        layers += [nn.ConvTranspose2d(widths[-1], channels, 4, 2, 1, bias=False), nn.Tanh()]
        # `main` matches the PyTorch example's attribute name, so state_dict keys line up.
        self.main = nn.Sequential(*layers)
        self.apply(init_weights)
        if num_classes:  # one-hot rows by lookup: F.one_hot checks the labels' range on the host (a sync)
            self.register_buffer("class_eye", torch.eye(num_classes), persistent=False)

    def forward(self, z: Tensor, labels: Tensor | None = None) -> Tensor:
        """Generate images ``(N, channels, R, R)`` from ``z`` of shape ``(N, z_dim)`` or ``(N, z_dim, 1, 1)``
        and, for a conditional generator, integer ``labels`` of shape ``(N,)``."""
        if z.dim() == 2:
            z = z[:, :, None, None]
        if z.dim() != 4 or z.shape[1:] != (self.z_dim, 1, 1):
            raise ValueError(
                f"expected z of shape (N, {self.z_dim}) or (N, {self.z_dim}, 1, 1), got {tuple(z.shape)}"
            )
        if self.num_classes:
            onehot = self.class_eye[_check_labels(labels, z.shape[0], self.num_classes)]
            z = torch.cat([z, onehot.to(z.dtype)[:, :, None, None]], dim=1)
        elif labels is not None:
            raise ValueError("labels given to an unconditional generator (model.num_classes=0)")
        return self.main(z)


class Discriminator(nn.Module):
    """Maps images (and, when conditional, class labels) to one real/fake logit per sample.

    Mirror of the generator: stride-2 convs halve the size and double the
    channels (capped at ``max_channels``), LeakyReLU(0.2), a normalisation on all
    but the input layer (BN by default), then a kernel=base conv down to a single
    logit. Options: ``norm`` "layer" or "none" (a WGAN-GP critic must not use
    BN: its penalty is per sample), ``spectral`` normalisation of every weight
    (Miyato et al., 2018), and a class-projection term for conditional D
    (Miyato & Koyama, 2018): ``logit += <embed(y), sum_hw features(x)>``.
    """

    def __init__(
        self,
        resolution: int = 64,
        channels: int = 3,
        width: int = 64,
        max_channels: int = 1024,
        dropout: float = 0.0,
        norm: str = "batch",
        spectral: bool = False,
        num_classes: int = 0,
    ) -> None:
        super().__init__()
        base, n_up = stage_plan(resolution)
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"discriminator dropout must be in [0, 1), got {dropout!r}")
        if norm not in D_NORMS:
            raise ValueError(f"discriminator norm must be one of {', '.join(D_NORMS)}, got {norm!r}")
        self.resolution, self.channels, self.num_classes = resolution, channels, num_classes
        widths = [min(width * 2**i, max_channels) for i in range(n_up)]

        def activation() -> list[nn.Module]:
            # Dropout in D is an optional stabiliser; at 0 it is left out entirely.
            act: list[nn.Module] = [nn.LeakyReLU(0.2, inplace=True)]
            if dropout > 0:
                act.append(nn.Dropout(dropout))
            return act

        def normalise(c: int) -> list[nn.Module]:
            if norm == "batch":
                return [nn.BatchNorm2d(c)]
            return [nn.GroupNorm(1, c)] if norm == "layer" else []

        # No normalisation on the input layer: the paper found BN there destabilises training.
        layers: list[nn.Module] = [nn.Conv2d(channels, widths[0], 4, 2, 1, bias=False), *activation()]
        for c_in, c_out in zip(widths[:-1], widths[1:]):
            layers += [nn.Conv2d(c_in, c_out, 4, 2, 1, bias=False), *normalise(c_out), *activation()]
        layers.append(nn.Conv2d(widths[-1], 1, base, 1, 0, bias=False))
        self.main = nn.Sequential(*layers)
        self.embed = nn.Embedding(num_classes, widths[-1]) if num_classes else None
        self.apply(init_weights)
        if self.embed is not None:
            nn.init.normal_(self.embed.weight, 0.0, 0.02)
        if spectral:  # after init: the parametrization keeps the initialised weight as `original`
            for m in self.modules():
                if isinstance(m, (nn.Conv2d, nn.Embedding)):
                    spectral_norm(m)

    def features(self, x: Tensor) -> Tensor:
        """The trunk's output ``(N, C, base, base)``: everything but the last (logit) layer."""
        return self.main[:-1](x)

    def forward(self, x: Tensor, labels: Tensor | None = None) -> Tensor:
        """Return raw logits of shape ``(N,)`` for images ``x`` of shape ``(N, channels, R, R)``
        (and integer ``labels`` of shape ``(N,)`` for a conditional discriminator)."""
        if self.embed is None:
            if labels is not None:
                raise ValueError("labels given to an unconditional discriminator (model.num_classes=0)")
            return self.main(x).reshape(x.shape[0])
        h = self.features(x)
        logits = self.main[-1](h).reshape(x.shape[0])
        projection = (self.embed(_check_labels(labels, x.shape[0], self.num_classes)) * h.sum(dim=(2, 3))).sum(1)
        return logits + projection


def _check_labels(labels: Tensor | None, n: int, num_classes: int) -> Tensor:
    if labels is None:
        raise ValueError(f"a conditional model (model.num_classes={num_classes}) needs class labels")
    if labels.shape != (n,):
        raise ValueError(f"expected labels of shape ({n},), got {tuple(labels.shape)}")
    return labels.long()


# The model.* keys that fix tensor shapes and names: a checkpoint fits a config when these agree.
# model.d_dropout is not one: it adds no parameters, so checkpoints stay interchangeable across it.
ARCH_KEYS = ("resolution", "channels", "z_dim", "g_width", "d_width", "max_channels", "num_classes", "d_norm",
             "d_spectral")


def build_generator(m: ModelCfg) -> Generator:
    """G of the config's model section (`cfg.model`)."""
    return Generator(m.resolution, m.channels, m.z_dim, m.g_width, m.max_channels, m.num_classes)


def build_models(m: ModelCfg) -> tuple[Generator, Discriminator]:
    """An initialised ``(Generator, Discriminator)`` pair of the config's model section (`cfg.model`);
    G is built first, so seed before calling."""
    generator = build_generator(m)
    discriminator = Discriminator(m.resolution, m.channels, m.d_width, m.max_channels, m.d_dropout, m.d_norm,
                                  m.d_spectral, m.num_classes)
    return generator, discriminator


def arch_signature(m: ModelCfg) -> dict:
    """The model keys that fix the tensor shapes and names (ARCH_KEYS), as stored in checkpoints."""
    return {k: getattr(m, k) for k in ARCH_KEYS}


def count_params(module: nn.Module) -> int:
    """Total number of parameter elements in ``module``."""
    return sum(p.numel() for p in module.parameters())


__all__ = [
    "Discriminator",
    "Generator",
    "SUPPORTED_EXAMPLES",
    "ARCH_KEYS",
    "arch_signature",
    "build_generator",
    "build_models",
    "count_params",
    "D_NORMS",
    "init_weights",
    "stage_plan",
]
