# The two commands of the README. Both set up what they need and can be run again.
VENV ?= .venv
PY := $(VENV)/bin/python
WORK ?= work

.PHONY: setup demo test clean

setup:
	@scripts/bootstrap.sh

# The main job: an untrained checkpoint, its ONNX stage graphs, and their verification.
demo: setup
	@scripts/demo.sh

test: setup
	@scripts/test_deps.sh
	@$(PY) -m pytest -q

clean:
	rm -rf $(WORK)
