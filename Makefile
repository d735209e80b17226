# The two commands of the README. Both install first (fast when already installed: the pinned
# torch/torchvision wheels lie on this machine's disk, see constraints.txt).
PYTHON ?= python3
PIP_INSTALL = $(PYTHON) -m pip install --quiet --disable-pip-version-check --root-user-action=ignore

.PHONY: install demo test lint

install:
	$(PIP_INSTALL) -c constraints.txt -e ".[dev]"

demo: install
	crossderm demo --out demo

test: install
	$(PYTHON) -m pytest -q

lint:
	ruff check src tests benchmarks
