# Set-up and main entry points. Everything installs into .venv on first use.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: demo test bench install clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet torch==2.13.0
	$(PY) -m pip install --quiet -e '.[test]'
	# k-diffusion (a test peer): its sampling module only; its own dependencies would replace numpy/torch(vision)
	$(PY) -m pip install --quiet --no-deps "k-diffusion==0.0.16"
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(PY) -m fewstep demo --overwrite  # make demo reruns into fewstep-out/demo

test: $(STAMP)
	$(PY) -m pytest -q

# Quality, speed and training cost beside diffusers -> BENCHMARKS.md (~15 min on 2 CPU cores; BENCH_ARGS=--help).
bench: $(STAMP)
	FEWSTEP_MAKE_BENCH=1 $(PY) -m benchmarks.bench $(BENCH_ARGS)

clean:
	rm -rf $(VENV) build *.egg-info src/*.egg-info
