# Two entry points: `make demo` runs the main job on the trained toy preset, `make test` runs the test suite.
# Both bootstrap themselves: uv into .uv/, then the locked dependencies into .venv/.

PYTHON ?= python3
UV_VERSION := 0.13.8
UV := .uv/bin/uv
VENV := .venv
export UV_PYTHON_DOWNLOADS := never
export UV_PROJECT_ENVIRONMENT := $(VENV)
export PREFECT_SERVER_ANALYTICS_ENABLED := false

.PHONY: demo test bench bench-gpu toy-weights lock clean

$(UV):
	$(PYTHON) -m venv .uv
	.uv/bin/python -m pip install --quiet --disable-pip-version-check uv==$(UV_VERSION)

$(VENV)/.synced: $(UV) pyproject.toml uv.lock
	$(UV) sync --frozen --compile-bytecode --python $(PYTHON)
	touch $@

demo: $(VENV)/.synced
	mkdir -p out/demo
	$(VENV)/bin/python -c "from magic141.toy_world import write_corpus; write_corpus('out/demo/corpus', 120, 'train', seed=7)"
	$(VENV)/bin/magic141 index build out/demo/corpus --index-dir out/demo/index --model toy --incremental
	$(VENV)/bin/magic141 bulk examples/prompts.csv --out-dir out/demo --index-dir out/demo/index
	$(VENV)/bin/magic141 catalog sheet --catalog sqlite:///out/demo/catalog.db --out out/demo/contact-sheet.png

test: $(VENV)/.synced
	$(VENV)/bin/python -m pytest -n 2 --dist worksteal

bench: $(VENV)/.synced
	$(VENV)/bin/python bench/cli_latency.py
	$(VENV)/bin/python bench/big_csv.py
	$(VENV)/bin/python bench/generate_overhead.py
	$(VENV)/bin/python bench/quantization.py
	$(VENV)/bin/python bench/long_video.py
	$(VENV)/bin/python bench/toy_world.py
	$(VENV)/bin/python bench/text_reading.py
	$(VENV)/bin/python bench/retrieval.py   # about 30 min on 2 cores; creates bench/.autofaiss-venv

# The shipped toy-world weights (magic141/toy_weights), every stage trained from scratch on this machine's CPUs
# (the T2V teacher only as the I2V teacher's starting point).
toy-weights: $(VENV)/.synced
	OMP_NUM_THREADS=2 $(VENV)/bin/magic141 train all --out-dir out/train --ship-to magic141/toy_weights

bench-gpu: $(VENV)/.synced
	$(VENV)/bin/python bench/model_gpu.py --low-memory

lock: $(UV)
	$(UV) lock

clean:
	rm -rf $(VENV) .uv out .pytest_cache
