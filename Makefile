# s3pyfs developer entry points (see README):
#   make demo       bootstrap, start a local S3 server, mount a bucket, show it off
#   make demo-stop  unmount the demo and stop its S3 server
#   make test       bootstrap, then run the whole test suite
#   make lock       write constraints.txt from .venv: after adding a dependency to
#                   pyproject.toml or upgrading one on purpose (then make test, commit both)
#   make image      build the container image with podman and run it against a local
#                   S3 server (scripts/image.sh; deploy/docker/README.md)
# scripts/bootstrap.sh installs Debian packages and .venv; it is quick when
# there is nothing to do.

.PHONY: all bootstrap demo demo-stop test lock image

all: test

bootstrap:
	@bash scripts/bootstrap.sh

demo: bootstrap
	@bash scripts/demo.sh

demo-stop:
	@bash scripts/demo-stop.sh

test: bootstrap
	.venv/bin/python -m pytest -q tests

lock: bootstrap
	.venv/bin/python scripts/lock.py

image: bootstrap
	@bash scripts/image.sh

# Benchmarks (benchmarks/README.md): s3pyfs vs s3fs-fuse vs direct S3 on a
# private SeaweedFS.  bench-quick takes a few minutes; bench takes about half
# an hour and writes benchmarks/RESULTS.md.  Extra options: BENCH_ARGS="...".
.PHONY: bench bench-quick
BENCH_ARGS ?=

bench: bootstrap
	.venv/bin/python benchmarks/run.py --markdown benchmarks/RESULTS.md $(BENCH_ARGS)

bench-quick: bootstrap
	.venv/bin/python benchmarks/run.py --quick $(BENCH_ARGS)
