.PHONY: bench-loms
bench-loms: ## benchmark loms + notifier: relay drain, raw halves, commit->notifier latency, RSS
	$(RUN) orderly stack up
	$(RUN) python -m bench.loms
