# The two commands of the README. Both set up what they need and can be run again.
VENV ?= .venv
PY := $(VENV)/bin/python
WORK ?= work
# pytest-xdist workers for make test: the two cores of a CI machine (one test file per worker at a time).
TEST_WORKERS ?= 2
LINTED := services export tests benchmarks scripts deploy/docker

.PHONY: setup demo test test-fast lint images clean

setup:
	@scripts/bootstrap.sh

# The main job: an untrained checkpoint, its ONNX stage graphs, and their verification.
demo: setup
	@scripts/demo.sh

# Everything: set-up, the test services, lint and types, then both tiers (what .ci/run runs) while the images build
# in the background (test_images.py waits for that build's lock, then reuses what it built).
# The CPU is printed first (CPUs of this machine kind differ five-fold), the 15 slowest tests last.
test:
	@scripts/cpu_report.sh
	@date -u +"make test: set-up starts at %H:%M:%S UTC"
	@scripts/bootstrap.sh
	@scripts/test_deps.sh
	@$(MAKE) --no-print-directory lint
	@date -u +"make test: images start building in the background at %H:%M:%S UTC (log: $(WORK)/build_images.log)"
	@mkdir -p $(WORK) && (scripts/build_images.sh --if-possible >$(WORK)/build_images.log 2>&1 &)
	@date -u +"make test: tests start at %H:%M:%S UTC"
	@MEDSAM2_STRICT_SKIPS=1 $(PY) -m pytest -q --durations=15 --numprocesses=$(TEST_WORKERS) --dist=loadfile
	@date -u +"make test: done at %H:%M:%S UTC"

# The inner loop: the unit tier only (no torch, no servers); sets up only when there is no .venv yet.
test-fast:
	@[ -x $(PY) ] || scripts/bootstrap.sh
	@$(PY) -m pytest -q tests/unit

# The service image and the CPU build image, with buildah (cached by content: a second run takes seconds).
images:
	@scripts/build_images.sh

lint:
	@$(VENV)/bin/ruff check $(LINTED)
	@$(VENV)/bin/ruff format --check $(LINTED)
	@$(VENV)/bin/mypy

clean:
	rm -rf $(WORK)
