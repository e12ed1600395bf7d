.PHONY: bench test

# The benchmark suite (about 8 minutes): bench/results/*.json and docs/benchmarks.md.
bench:
	scripts/bench

test:
	scripts/test
