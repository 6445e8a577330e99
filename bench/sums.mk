.PHONY: bench-sums
bench-sums: ## sums: 3 instances, 64 connections, 50k requests; batched vs reference design vs raw SQL loop
	ORDERLY_STACK_DIR=$${ORDERLY_STACK_DIR:-$(CURDIR)/.stack} $(RUN) orderly stack up mariadb redis >/dev/null
	ORDERLY_STACK_DIR=$${ORDERLY_STACK_DIR:-$(CURDIR)/.stack} $(RUN) python -m bench.sums $(BENCH_SUMS_ARGS)
