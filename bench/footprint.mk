.PHONY: bench-footprint
bench-footprint: ## memory and CPU of every process of `orderly up` under a mixed load → bench/results/footprint.json
	$(RUN) orderly stack up
	flock /tmp/orderly-up.lock $(RUN) python -m bench.footprint
