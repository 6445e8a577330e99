#!/usr/bin/env bash
# Installs what the project needs and is missing: Debian packages, the Kafka jars, the Python environment.
# Idempotent and quick when everything is present; run by `make setup`, `make up` and `make test`.
set -euo pipefail
cd "$(dirname "$0")/.."

PACKAGES=(postgresql-15 mariadb-server mariadb-client redis-server rabbitmq-server nats-server clickhouse-server prometheus
          default-jre-headless maven curl procps iproute2 wrk docker-compose)
say() { printf 'setup: %s\n' "$*"; }
SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"

missing=()
for pkg in "${PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
if [ ${#missing[@]} -gt 0 ]; then
  say "installing Debian packages: ${missing[*]}"
  $SUDO apt-get update -qq
  # No service starts on its own: the local stack starts its own copies on loopback.
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

KAFKA_LIBS=.stack/lib/kafka
POM=stack/kafka/pom.xml
stamp="$KAFKA_LIBS/.pom.sha256"
if [ ! -f "$stamp" ] || [ "$(sha256sum "$POM" | cut -d' ' -f1)" != "$(cat "$stamp")" ]; then
  say "resolving the Kafka jars from Maven Central"
  rm -rf "$KAFKA_LIBS" && mkdir -p "$KAFKA_LIBS"
  mvn -q -B -Dstyle.color=never -f "$POM" dependency:copy-dependencies -DincludeScope=runtime -DoutputDirectory="$PWD/$KAFKA_LIBS"
  sha256sum "$POM" | cut -d' ' -f1 > "$stamp"
fi

# kustomize renders the Kubernetes manifests (deploy/k8s) for their offline validation in `make test`.
KUSTOMIZE_VERSION=v5.7.1
KUSTOMIZE=.stack/bin/kustomize
if [ ! -x "$KUSTOMIZE" ] || [ "$("$KUSTOMIZE" version 2>/dev/null)" != "$KUSTOMIZE_VERSION" ]; then
  command -v go >/dev/null 2>&1 || { say "error: Go is needed to build kustomize (go install)"; exit 1; }
  say "building kustomize $KUSTOMIZE_VERSION with go install"
  GOBIN="$PWD/.stack/bin" GOFLAGS=-mod=mod go install "sigs.k8s.io/kustomize/kustomize/v5@$KUSTOMIZE_VERSION"
fi

if ! command -v uv >/dev/null 2>&1; then
  say "installing uv with pip"
  python3 -m pip install --quiet uv 2>/dev/null || python3 -m pip install --quiet --user --break-system-packages uv
  export PATH="$HOME/.local/bin:$PATH"
fi
uv sync --frozen --quiet
