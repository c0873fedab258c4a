# One image for every drivestream service: `drivestream <verb>` is the entry point.
# torch and onnxruntime-gpu from PyPI bring their own CUDA libraries, so a plain Python base
# runs on CPU hosts and, with the NVIDIA container toolkit, on GPU hosts.
FROM python:3.11-slim

ENV PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /app
COPY pyproject.toml README.md ./
COPY schemas schemas
COPY ingest ingest
COPY trainer trainer
COPY inference inference
COPY pipeline pipeline
RUN pip install --quiet .

VOLUME ["/data"]
ENTRYPOINT ["drivestream"]
CMD ["--help"]
