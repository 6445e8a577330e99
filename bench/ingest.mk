.PHONY: bench-ingest
bench-ingest: ## benchmark the ingest pipeline (raw ceilings, API, drain, latency) → bench/results/ingest.{json,md}
	$(RUN) orderly stack up
	$(RUN) python -m bench.ingest
