# syntax=docker/dockerfile:1
# dcgan-dist on NVIDIA GPUs: torch 2.14.1 (its CUDA 13 build, which brings cuBLAS, cuDNN and NCCL
# as wheels), the package and accelerate, pinned by constraints.txt; runs as a non-root user.
#
#   docker build -t dcgan-dist .
#   docker run --rm --gpus all --ipc=host -v "$PWD/runs:/app/runs" dcgan-dist      # quickstart, every GPU
#   docker run --rm --gpus all --ipc=host -v "$PWD/runs:/app/runs" -v /data:/data:ro dcgan-dist \
#       --config_file launch/node8_bf16.yaml -m dcgan_dist.train configs/faces64.yaml data.shards=/data/faces64
#
# The entry point is `accelerate launch`; the arguments are its arguments (the default trains the
# quickstart). configs/ and launch/ are in the working directory /app.
#
# Build arguments:
#   CUDA_IMAGE        the base image. `base` suffices for training (torch's wheels carry the CUDA
#                     libraries); DeepSpeed ops compiled at run time need a `-devel-` image.
#   INCEPTION         bake the FID Inception weights in: a URL, or a path inside the build context
#                     (e.g. weights/pt_inception-2015-12-05-6726825d.pth); sets DCGAN_DIST_INCEPTION.
#                     pytorch-fid's file: https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/pt_inception-2015-12-05-6726825d.pth
#   INCEPTION_SHA256  the weights' expected sha256 (default: pytorch-fid's file; empty = do not check)

ARG CUDA_IMAGE=nvidia/cuda:13.0.2-base-ubuntu24.04

FROM ${CUDA_IMAGE} AS build
ARG DEBIAN_FRONTEND=noninteractive
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
# Ubuntu 24.04's Python 3.12; package versions come from the base image's release.
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3 python3-venv \
 && rm -rf /var/lib/apt/lists/*
RUN python3 -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
WORKDIR /src
# The dependencies first, in their own layer: a code change does not reinstall torch.
COPY pyproject.toml constraints.txt README.md ./
RUN python -c "import tomllib; print('\n'.join(tomllib.load(open('pyproject.toml', 'rb'))['project']['dependencies']))" \
        > /tmp/requirements.txt \
 && pip install --no-cache-dir -c constraints.txt -r /tmp/requirements.txt
COPY dcgan_dist ./dcgan_dist
RUN pip install --no-cache-dir -c constraints.txt .

ARG INCEPTION=
ARG INCEPTION_SHA256=6726825d0af5f729cebd5821db510b11b1cfad8faad88a03f1befd49fb9129b2
RUN --mount=type=bind,target=/context \
    mkdir -p /opt/dcgan-dist \
 && if [ -n "$INCEPTION" ]; then \
      case "$INCEPTION" in \
        *://*) python -c 'import sys, urllib.request; urllib.request.urlretrieve(sys.argv[1], sys.argv[2])' \
                   "$INCEPTION" /opt/dcgan-dist/inception.pth ;; \
        *) cp "/context/$INCEPTION" /opt/dcgan-dist/inception.pth ;; \
      esac \
      && if [ -n "$INCEPTION_SHA256" ]; then \
           echo "$INCEPTION_SHA256  /opt/dcgan-dist/inception.pth" | sha256sum -c -; fi \
      && python -c 'import sys; from pathlib import Path; from dcgan_dist.metrics.inception import load_network; \
                    print("Inception weights:", load_network(Path(sys.argv[1]))[1])' /opt/dcgan-dist/inception.pth; \
    fi

FROM ${CUDA_IMAGE}
ARG DEBIAN_FRONTEND=noninteractive
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3 \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --uid 1001 --user-group --create-home --shell /bin/bash dcgan
COPY --from=build /opt/venv /opt/venv
COPY --from=build /opt/dcgan-dist /opt/dcgan-dist
WORKDIR /app
COPY configs ./configs
COPY launch ./launch
RUN mkdir -p runs && chown 1001:1001 runs

ARG INCEPTION=
# The cache (embedded data set, FID statistics) goes to /tmp: writable for any --user and under
# Apptainer's read-only image. DCGAN_DIST_INCEPTION is set only when weights were baked in.
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    DCGAN_DIST_CACHE=/tmp/dcgan_dist \
    DCGAN_DIST_INCEPTION=${INCEPTION:+/opt/dcgan-dist/inception.pth}
USER 1001:1001
ENTRYPOINT ["accelerate", "launch"]
CMD ["-m", "dcgan_dist.train", "configs/quickstart.yaml"]
