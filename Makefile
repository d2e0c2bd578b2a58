.PHONY: bench

# The benchmark suite: figures and ratios, report under bench/results/ (see README "Performance").
bench:
	bench/run
