# One image for every orderly process; the command picks the process (see compose.yaml).
FROM python:3.11-slim

ENV PYTHONUNBUFFERED=1 \
    UV_COMPILE_BYTECODE=1 \
    UV_LINK_MODE=copy \
    UV_PROJECT_ENVIRONMENT=/app/.venv \
    PATH=/app/.venv/bin:$PATH

# A numeric user, so that Kubernetes can verify runAsNonRoot (deploy/k8s runs it as 10001).
RUN pip install --no-cache-dir uv && useradd --system --uid 10001 --user-group --create-home orderly
WORKDIR /app

# Dependencies first, so code changes do not reinstall them.
COPY pyproject.toml uv.lock README.md ./
RUN uv sync --frozen --no-dev --no-install-project
COPY src ./src
RUN uv sync --frozen --no-dev

USER 10001:10001
ENTRYPOINT ["orderly"]
CMD ["--help"]
