# Two promises: `make demo` runs the main job on bundled data, `make test` runs the whole suite.
# Each creates .venv and installs what it needs when it is missing.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo test install clean bench

$(STAMP): pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -c constraints.txt -e ".[notebooks,test]"
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/mitoolkit compare --dataset digits --model reference --layer conv2 --methods none,pca,cnn,gap --seeds 5 --max-steps 1000 --out results/demo

test: $(STAMP)
	MITOOLKIT_QUICK=1 $(PY) -m pytest -ra --nbmake tests notebooks

bench: $(STAMP)
	$(PY) benchmarks/bench_mine.py

clean:
	rm -rf $(VENV) build *.egg-info
