# One-command set-up: `make demo` and `make test` create .venv, install torch (pinned, so no CUDA
# download on CPU machines), the package with its dev extras, and make sure Fashion-MNIST is present;
# `make test` also makes sure PostgreSQL is installed (the tests start a throwaway server of it).
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
TORCH  ?= torch==2.13.0
STAMP  := $(VENV)/.robustact-installed
DATA_STAMP := $(VENV)/.fashion-mnist-ready
DEMO_OUT ?= runs/demo
DEMO_JOBS ?= 2

.PHONY: setup data postgres demo test lint bench clean

setup: $(STAMP)

$(PY):
	$(PYTHON) -m venv $(VENV)

$(STAMP): pyproject.toml | $(PY)
	$(PY) -m pip install --quiet --disable-pip-version-check "$(TORCH)"
	$(PY) -m pip install --quiet --disable-pip-version-check -e ".[dev]"
	# test-only reference implementation; --no-deps: its pinned requests is not needed
	$(PY) -m pip install --quiet --disable-pip-version-check --no-deps "torchattacks==3.5.1"
	# MinAtar games for robustact.rl; --no-deps: its matplotlib/seaborn/pandas only serve its GUI
	$(PY) -m pip install --quiet --disable-pip-version-check --no-deps "minatar==1.0.15"
	touch $(STAMP)

data: $(DATA_STAMP)

$(DATA_STAMP): $(STAMP)
	$(PY) -m robustact data fetch fashion_mnist
	touch $(DATA_STAMP)

# Debian's postgresql (apt-get, as root) unless its server binaries are there; the store tests
# start and stop their own server with tools/pg_server.py
postgres:
	$(PYTHON) tools/pg_server.py install

demo: $(STAMP) $(DATA_STAMP)
	$(PY) -m robustact run configs/demo.yaml --out $(DEMO_OUT) --jobs $(DEMO_JOBS)
	$(PY) -m robustact report $(DEMO_OUT)

lint: $(STAMP)
	$(PY) -m ruff check src tests bench tools

test: $(STAMP) $(DATA_STAMP) postgres lint
	$(PY) -m pytest -q

bench: $(STAMP) $(DATA_STAMP)
	# the original AutoAttack code, for bench/evaluation.py only (not a dependency of robustact)
	$(PY) -m pip install --quiet --disable-pip-version-check "pyautoattack==0.2.0"
	$(PY) bench/kwta.py
	$(PY) bench/attacks.py
	$(PY) bench/evaluation.py

clean:
	rm -rf $(VENV) build src/*.egg-info .pytest_cache .ruff_cache
