.PHONY: bench-items
bench-items: ## benchmark the items service (cached/uncached list, 90/10 mix, change-log lag, hello-world ceiling)
	$(RUN) python -m bench.items
