# The sweep image plus the mmdetection backend's own environment (mmcv compiled against torch 2.14; with nvcc,
# FORCE_CUDA=1 compiles the CUDA ops too). Workers of an mmdet sweep run this image.
#   docker build -f docker/mmdet.Dockerfile --build-arg BASE=sweep:latest -t sweep-mmdet:latest .
ARG BASE=sweep:latest
FROM ${BASE}

USER 0:0
RUN apt-get update \
 && apt-get install -y --no-install-recommends build-essential \
 && rm -rf /var/lib/apt/lists/* \
 && mkdir -p /opt/mmdet-env \
 && chown sweep:sweep /opt/mmdet-env
USER 1000:1000
ENV SWEEP_MMDET_ENV=/opt/mmdet-env SWEEP_MMDET_PYTHON=/opt/mmdet-env/bin/python
RUN scripts/mmdet-env.sh /opt/mmdet-env
