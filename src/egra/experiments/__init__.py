"""Studies over many runs; ``registry`` ties the docs to the results files under bench/results/."""
