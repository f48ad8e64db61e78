# pocketcnn serve: the light install (numpy, onnxruntime, Pillow, Starlette, uvicorn; no PyTorch)
# serving one ONNX model from 'pocketcnn export'.
#
#   docker build -t pocketcnn-serve .
#   docker run --rm -p 8000:8000 -v "$PWD/model.onnx:/models/model.onnx:ro" pocketcnn-serve
#   curl -F image=@cat.png http://127.0.0.1:8000/v1/predict
#
# Extra options go after the image name and replace the default arguments, e.g.
#   docker run ... pocketcnn-serve /models/model.onnx --host 0.0.0.0 --workers 2
# The model file must be readable by uid 10001 (chmod a+r model.onnx).
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /build
COPY pyproject.toml README.md ./
COPY src ./src
# the base dependencies are the light runtime; PyTorch and the training stack are extras
RUN pip install . && cd / && rm -rf /build \
    && useradd --create-home --uid 10001 pocketcnn

USER pocketcnn
WORKDIR /home/pocketcnn
EXPOSE 8000
STOPSIGNAL SIGTERM
HEALTHCHECK --interval=30s --timeout=5s --start-period=20s \
    CMD ["python", "-c", "import sys, urllib.request; sys.exit(urllib.request.urlopen('http://127.0.0.1:8000/healthz', timeout=3).status != 200)"]
ENTRYPOINT ["pocketcnn", "serve"]
CMD ["/models/model.onnx", "--host", "0.0.0.0", "--port", "8000"]
