# One image for every console script of the project: telemeter-server (the default command),
# telemeter-client, telemeter-benchmark and telemeter-authorization-server.
#
#   docker build -t telemeter:0.1.0 .
#   docker run --rm telemeter:0.1.0 telemeter-client --help
#
# Stage 1 builds the project's wheel (the compiled pass is a Cython extension: it needs gcc and
# libdeflate's headers) and
# installs it, with the dependency versions pinned in constraints.txt, into a virtualenv.
# Stage 2 is the slim base plus that virtualenv, run as an unprivileged user.
ARG PYTHON_IMAGE=python:3.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
# Not pinned: Debian drops a package version at each point release, so a pin would break the
# build within months; the base image tag already fixes the Debian release.
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends gcc libc6-dev libdeflate-dev \
 && rm -rf /var/lib/apt/lists/*
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
COPY constraints.txt pyproject.toml setup.py README.md ./
COPY telemeter ./telemeter
COPY app ./app
COPY client ./client
# Of the dev harness, only the authorization stand-in ships (compose runs it); the Redis Cluster
# launcher and the stack stay in the checkout.
COPY dev/__init__.py dev/authorization_server.py ./dev/
# The wheel is built without pip's build isolation, so its build requirements are pinned too:
# Cython by constraints.txt, setuptools and wheel here (pip freeze leaves those two out).
# The runtime virtualenv gets no pip of its own: the build venv's pip installs into it. The last
# line checks, outside /src (-I), that the installed wheel carries the compiled modules.
RUN python -m venv /opt/build \
 && /opt/build/bin/pip install --constraint constraints.txt \
      setuptools==84.2.1 wheel==0.48.0 Cython \
 && /opt/build/bin/pip wheel --no-build-isolation --no-deps --wheel-dir /dist . \
 && python -m venv --without-pip /opt/telemeter \
 && /opt/build/bin/pip --python /opt/telemeter/bin/python install \
      --constraint constraints.txt /dist/telemeter-*.whl \
 && /opt/telemeter/bin/python -I -c "import telemeter._fastpass, telemeter._snapshot, telemeter._remotewrite"

FROM ${PYTHON_IMAGE}
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
# libdeflate inflates the stored snapshots for /federate (not pinned, as above).
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends libdeflate0 \
 && rm -rf /var/lib/apt/lists/*
# A fixed numeric user, so that Kubernetes' runAsNonRoot can check it without a name lookup.
RUN groupadd --system --gid 10001 telemeter \
 && useradd --system --uid 10001 --gid telemeter --no-create-home --home-dir /nonexistent \
      --shell /usr/sbin/nologin telemeter
COPY --from=build /opt/telemeter /opt/telemeter
ENV PATH=/opt/telemeter/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1
USER 10001:10001
# The Go defaults: the server's external listener (/authorize, /upload) and internal listener
# (/federate, /metrics, /status), and the client's listener (health, metrics, reload).
EXPOSE 9003 9004 9002
# On SIGTERM the server releases its ring leases before it closes its listeners, so the other
# pods take its slot ranges over within two heartbeats (ring invariant I4).
STOPSIGNAL SIGTERM
CMD ["telemeter-server"]
