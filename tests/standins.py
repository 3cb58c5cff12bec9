"""A tiny, deterministic stand-in for the Inception extractor, shared by the in-process tests and the
scripts launched with 2 processes (whose PYTHONPATH holds this folder)."""

from __future__ import annotations

from pathlib import Path

import torch


class Float64Extractor:
    """A deterministic stand-in for Inception (fixed random projections, float64): per-sample results
    do not depend on batch composition or thread count, so statistics can be compared to 1e-12.
    Used where the test is about reduction, caching, splitting or reporting, never about FID values.
    It has what the evaluate CLI reports of an extractor (path, sha256, format, mode)."""

    has_logits = True
    identity = "float64-test-extractor/v1"
    path = Path("float64-test-extractor")
    sha256, format, mode, device = "0" * 64, "stand-in", "tf1", torch.device("cpu")

    def __init__(self):
        g = torch.Generator().manual_seed(1234)
        self.proj = torch.randn(3 * 8 * 8, 2048, generator=g, dtype=torch.float64) / 8
        self.head = torch.randn(2048, 1008, generator=g, dtype=torch.float64) / 16
        self.seen = 0

    def __call__(self, images):
        x = torch.stack(list(images)) if not isinstance(images, torch.Tensor) else images
        x = x.double().expand(-1, 3, -1, -1) / 255
        feats = torch.tanh(torch.nn.functional.adaptive_avg_pool2d(x, 8).flatten(1) @ self.proj)
        self.seen += x.shape[0]
        return feats, feats @ self.head


def stand_in_loader(*_args, **_kwargs) -> Float64Extractor:
    """Replaces `load_extractor` (any weights path, device, preprocessing) in the modules that call it."""
    return Float64Extractor()


def install(setattr_) -> None:
    """Make the evaluate CLI and the training evaluator use the stand-in: `setattr_` is pytest's
    `monkeypatch.setattr` in the tests, plain `setattr` in a launched script."""
    from dcgan_dist import evaluate, evaluator

    for module in (evaluate, evaluator):
        setattr_(module, "load_extractor", stand_in_loader)
