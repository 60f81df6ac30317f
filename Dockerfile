# The serving image: the service, its dependencies and the bundled models; no TensorFlow, no compilers.
#   docker build -t rnnserve .
#   docker run -p 8000:8000 rnnserve
# The build stage compiles the C tokenizer, so its image has a C compiler and Python's headers; it drops the
# debug sections some wheels ship (uvloop's 14 MB extension is 2 MB without them). The runtime stage copies
# the virtual environment onto a base without them (both must have the same Python).
# Offline builds: --build-arg WHEELHOUSE=wheelhouse (a folder of wheels made with `pip download`),
# --build-arg BASE_IMAGE=... (python3 and venv) and --build-arg BUILD_IMAGE=... (the same plus a compiler).
# Extras: --build-arg EXTRAS=store (comma-separated) adds their packages; `store` is obstore, for a model
# repository in a bucket (MODELS_DIR=s3://..., gs://..., az://...):
#   docker build --build-arg EXTRAS=store -t rnnserve-store .
ARG BASE_IMAGE=python:3.11-slim
ARG BUILD_IMAGE=python:3.11

FROM ${BUILD_IMAGE} AS build
ARG WHEELHOUSE=docker/no-wheelhouse
ARG EXTRAS=""
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1
COPY ${WHEELHOUSE} /wheelhouse
RUN python3 -m venv /opt/venv
# Dependencies first (their own layer, cached while only the source changes).
COPY pyproject.toml README.md /src/
RUN cd /src && EXTRAS="$EXTRAS" python3 -c "import os, tomllib; p = tomllib.load(open('pyproject.toml','rb'))['project']; \
extras = [e for e in os.environ['EXTRAS'].split(',') if e]; \
print('\n'.join(p['dependencies'] + [d for e in extras for d in p['optional-dependencies'][e]]))" > /tmp/requirements.txt \
 && if ls /wheelhouse/*.whl >/dev/null 2>&1; then FIND="--no-index --find-links /wheelhouse"; else FIND=""; fi \
 && /opt/venv/bin/pip install $FIND -r /tmp/requirements.txt "setuptools>=68" wheel
COPY setup.py /src/
COPY rnnserve /src/rnnserve
COPY service /src/service
COPY training /src/training
RUN if ls /wheelhouse/*.whl >/dev/null 2>&1; then FIND="--no-index --find-links /wheelhouse"; else FIND=""; fi \
 && /opt/venv/bin/pip install $FIND --no-deps --no-build-isolation /src \
 && /opt/venv/bin/python -c "from rnnserve.service.core.tokenizer import _fasttok; assert _fasttok, 'tokenizer not compiled'" \
 && /opt/venv/bin/pip uninstall -y setuptools wheel pip \
 && find /opt/venv -name __pycache__ -prune -exec rm -rf {} + \
 && find /opt/venv/lib -type d -name tests -path "*site-packages/*" -prune -exec rm -rf {} + \
 && find /opt/venv -name "*.so" -type f -exec sh -c 'readelf -S "$1" | grep -q "\.debug_info" && strip --strip-debug "$1"' _ {} \;

FROM ${BASE_IMAGE} AS runtime
# A plain passwd entry: minimal bases (debootstrap minbase) have no useradd.
RUN echo 'rnnserve:x:10001:10001:rnnserve:/nonexistent:/usr/sbin/nologin' >> /etc/passwd \
 && echo 'rnnserve:x:10001:' >> /etc/group \
 && rm -rf /var/cache/apt /var/lib/apt/lists/* /usr/share/doc /usr/share/man
COPY --from=build /opt/venv /opt/venv
COPY models /models
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    RNNSERVE_MODELS_DIR=/models \
    RNNSERVE_HOST=0.0.0.0 \
    RNNSERVE_PORT=8000
USER 10001
EXPOSE 8000 8001
HEALTHCHECK --interval=5s --timeout=3s --start-period=60s --retries=3 \
  CMD ["python3", "-c", "import os, urllib.request; urllib.request.urlopen(f\"http://127.0.0.1:{os.environ.get('RNNSERVE_PORT', '8000')}/health/ready\", timeout=2)"]
STOPSIGNAL SIGTERM
CMD ["rnnserve"]
