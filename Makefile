# Llama 3 from scratch. Two commands on a fresh machine: `make run` and `make test`.
# Everything is installed into .venv with python3 -m venv + pip from requirements.txt.

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

.PHONY: setup run run-tp test test-tp8 test-ui lab demo clean synthetic-8b synthetic-1b synthetic-3b bench bench-sizes \
	test-8b test-1b tolerance-8b synthetic-70b-slice bench-tp bench-llamacpp

setup: $(INSTALLED) $(DEMO) $(DEMO_HF) $(KERNEL_LIB)

$(INSTALLED): requirements.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -r requirements.txt
	$(PY) -m ipykernel install --sys-prefix --name $(KERNEL) --display-name "Python (llama3-from-scratch)" >/dev/null
	touch $@

# The demo checkpoint: Llama 3 in miniature, expanded from the committed trained parameters.
# The same weights in Hugging Face's layout (notebook 05), written as Hugging Face's converter does.
demo: $(DEMO) $(DEMO_HF)
$(DEMO): $(INSTALLED) scripts/build_demo_checkpoint.py scripts/train_demo.py scripts/demo_checkpoint/trained.pt scripts/demo_checkpoint/params.json
	$(PY) scripts/build_demo_checkpoint.py
$(DEMO_HF): $(DEMO) scripts/write_hf.py
	$(PY) scripts/make_checkpoint.py $(dir $@) --from $(dir $(DEMO)) --layout hf >/dev/null

# The bfloat16 matmul kernel for CPUs with AVX-512 BF16 (see notebooks/matmul_kernel.py). It is
# optional: where g++ or x86-64 is missing, the build says so and torch does the matmuls.
$(KERNEL_LIB): scripts/bf16_linear.cpp
	@mkdir -p build
	@if [ "$$(uname -m)" = x86_64 ] && command -v g++ >/dev/null; then \
		g++ -std=c++17 -O3 -mavx512f -mavx512bw -mavx512vl -mavx512dq -mavx512bf16 -fopenmp -fPIC -shared \
			$< -o $@ || { rm -f $@; echo "bf16_linear.so: build failed; torch will do the matmuls"; }; \
	else echo "bf16_linear.so: needs x86-64 and g++; torch will do the matmuls"; fi

# Executes every notebook in a fresh kernel, writes build/executed, build/html and
# build/run-summary.json, and prints the top 5 next tokens. Honours LLAMA3_DIR and LLAMA3_PROMPT.
run: setup
	$(PY) scripts/run_notebooks.py

# Tensor parallelism across NPROC processes (llama3.parallel): torchrun starts one process per shard of
# LLAMA3_DIR (Meta's consolidated.0r.pth), or of the demo cut into NPROC shards (build/llama3-demo-N-shards;
# NPROC 1, 2 or 4: the demo has 4 query and 2 key/value heads). Prints the top 5 next tokens and
# LLAMA3_MAX_NEW_TOKENS greedy tokens; writes build/run-tp-summary.json. Honours LLAMA3_PROMPT.
NPROC ?= 2
run-tp: setup
	$(PY) scripts/run_tp.py --nproc-per-node $(NPROC)

# Unit and parity tests, then nbval re-executes every notebook and compares its stored outputs.
# Always the demo checkpoint and the default prompt: the stored outputs come from them.
# nbval settings: --nbval-current-env runs the kernel of this venv; tests/nbval_sanitize.cfg
# says what text is normalised before comparison and why.
test: setup
	env -u LLAMA3_DIR -u LLAMA3_PROMPT -u LLAMA3_DEVICE $(PY) -m pytest tests $(NOTEBOOKS) \
		--ignore=tests/full_scale --nbval --nbval-current-env --nbval-sanitize-with tests/nbval_sanitize.cfg

# Tensor parallelism in eight processes (a random checkpoint with 8 query heads cut in 8 shards), against
# the one-process forward and Meta's model-parallel reference in eight processes; not part of `make test`.
test-tp8: setup
	env -u LLAMA3_DIR -u LLAMA3_PROMPT LLAMA3_TEST_TP8=1 $(PY) -m pytest tests/test_tensor_parallel.py -k tp8 -v

# The attention explorer (notebook 10) in a real browser: JupyterLab on 127.0.0.1 with this
# project's kernel, Debian's Chromium (installed here if missing; Playwright cannot download
# browsers on these machines) driven by Playwright. Screenshots go to build/ui/.
test-ui: setup
	@test -x /usr/bin/chromium || (apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y chromium)
	env -u LLAMA3_DIR -u LLAMA3_PROMPT LLAMA3_TEST_UI=1 $(PY) -m pytest tests/ui -v

lab: setup
	cd notebooks && ../$(VENV)/bin/jupyter lab

# Full scale without the real weights: random weights in Meta-Llama-3-8B's exact format (16 GB of disk).
SYNTHETIC_8B := build/llama3-8b-synthetic
synthetic-8b: $(SYNTHETIC_8B)/consolidated.00.pth
$(SYNTHETIC_8B)/consolidated.00.pth: | $(INSTALLED)
	$(PY) scripts/make_checkpoint.py $(SYNTHETIC_8B) --preset 8b

# The same for the small models, in Llama 3.2 1B's and 3B's shapes (2.5 GB and 6.4 GB of disk; tied output).
SYNTHETIC_1B := build/llama3.2-1b-synthetic
SYNTHETIC_3B := build/llama3.2-3b-synthetic
synthetic-1b: $(SYNTHETIC_1B)/consolidated.00.pth
$(SYNTHETIC_1B)/consolidated.00.pth: | $(INSTALLED)
	$(PY) scripts/make_checkpoint.py $(SYNTHETIC_1B) --preset llama3.2-1b
synthetic-3b: $(SYNTHETIC_3B)/consolidated.00.pth
$(SYNTHETIC_3B)/consolidated.00.pth: | $(INSTALLED)
	$(PY) scripts/make_checkpoint.py $(SYNTHETIC_3B) --preset llama3.2-3b

# Ours against the usual in-RAM approach and the machine's floor, at 8B; writes build/bench.md.
bench: setup synthetic-8b
	$(PY) scripts/bench.py --model-dir $(SYNTHETIC_8B)

# This project's prefill and decode beside llama.cpp's on the same weights and token ids (not part of `make test`):
# llama-cpp-python (version pinned in requirements-llamacpp.txt) compiled from its source distribution for this
# CPU (-march=native through GGML_NATIVE, CPU only), the synthetic 8B written in Hugging Face's layout and
# converted to a bf16 GGUF by llama.cpp's own convert_hf_to_gguf.py from that source distribution (16 GB, kept
# beside the checkpoint; the Hugging Face copy is deleted). Writes build/bench-llamacpp.md.
LLAMACPP_VERSION := $(shell sed -n 's/^llama-cpp-python==//p' requirements-llamacpp.txt)
LLAMACPP_SRC := build/llamacpp/llama_cpp_python-$(LLAMACPP_VERSION)
LLAMACPP_INSTALLED := $(VENV)/.llamacpp-$(LLAMACPP_VERSION)
LLAMACPP_CMAKE_ARGS := -DGGML_NATIVE=ON -DGGML_LLAMAFILE=ON -DGGML_OPENMP=ON -DGGML_BLAS=OFF -DGGML_CUDA=OFF \
	-DGGML_VULKAN=OFF -DGGML_METAL=OFF -DLLAVA_BUILD=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF \
	-DLLAMA_BUILD_TOOLS=OFF -DLLAMA_BUILD_SERVER=OFF
$(LLAMACPP_SRC)/vendor/llama.cpp/convert_hf_to_gguf.py: requirements-llamacpp.txt | $(INSTALLED)
	@mkdir -p build/llamacpp
	$(PY) -m pip download --quiet --disable-pip-version-check --no-deps --no-binary :all: -d build/llamacpp \
		llama-cpp-python==$(LLAMACPP_VERSION)
	tar -xzf build/llamacpp/llama_cpp_python-$(LLAMACPP_VERSION).tar.gz -C build/llamacpp
	touch $@
$(LLAMACPP_INSTALLED): requirements-llamacpp.txt $(LLAMACPP_SRC)/vendor/llama.cpp/convert_hf_to_gguf.py | $(INSTALLED)
	CMAKE_ARGS="$(LLAMACPP_CMAKE_ARGS)" CMAKE_BUILD_PARALLEL_LEVEL=$$(nproc) $(PY) -m pip install --quiet \
		--disable-pip-version-check --no-binary llama-cpp-python -r requirements-llamacpp.txt
	touch $@
bench-llamacpp: setup synthetic-8b $(LLAMACPP_INSTALLED)
	$(PY) scripts/bench_llamacpp.py --model-dir $(SYNTHETIC_8B) --converter $(LLAMACPP_SRC)/vendor/llama.cpp/convert_hf_to_gguf.py

# Llama 3 70B's exact widths (dim 8192, 64 query and 8 key/value heads, FFN 28672, vocabulary 128256) in
# Meta's 8 model-parallel files, but 2 of its 80 layers: each layer is 1.7 GB and the embedding and output
# 4.2 GB, so the slice is 7.6 GB (the whole 70B is 141 GB), and bench-tp writes the same weights regrouped
# in 1, 2 and 4 files beside it one at a time (15 GB at most). Random weights at trained 8B's scale (std 0.02).
SLICE_70B := build/llama3-70b-slice
SLICE_LAYERS := 2
synthetic-70b-slice: $(SLICE_70B)/consolidated.07.pth
$(SLICE_70B)/consolidated.07.pth: | $(INSTALLED)
	$(PY) scripts/make_checkpoint.py $(SLICE_70B) --preset llama3-70b --n-layers $(SLICE_LAYERS) --shards 8 \
		--weight-std 0.02 --embedding-scale 0.02

# Tensor parallelism on the 70B slice in 1, 2, 4 and 8 processes (torchrun, gloo on the CPU) beside the
# one-process shard-by-shard forward: memory, time per layer, the collectives' share; writes build/bench-tp.md.
bench-tp: setup synthetic-70b-slice
	$(PY) scripts/bench_tp.py --model-dir $(SLICE_70B)

# What each model needs: disk, RAM for a smooth run, seconds per forward pass and per generated token,
# for Llama 3.2 1B, 3.2 3B and 3 8B (synthetic checkpoints, written if missing); writes build/sizes.md.
bench-sizes: setup synthetic-1b synthetic-3b synthetic-8b
	$(PY) scripts/bench.py --sizes $(SYNTHETIC_1B) $(SYNTHETIC_3B) $(SYNTHETIC_8B)

# Rounding at 8B's shape: cached vs uncached, ours vs Meta's reference and the per-head chain vs the
# forward pass, on random checkpoints of several scales and seeds (each 16 GB, written in turn to
# build/tolerance-8b and deleted); writes build/tolerance-trials.md. Not part of `make test`.
tolerance-8b: setup
	$(PY) scripts/tolerance_trials.py

# Every notebook at 8B inside a 2 GiB memory limit (a cgroup; needs root), and parity with Meta's code.
test-8b: setup synthetic-8b
	LLAMA3_FULL_SCALE_DIR=$(abspath $(SYNTHETIC_8B)) $(PY) -m pytest tests/full_scale -v -s

# The same at Llama 3.2 1B's shape inside 1.5 GiB (the limits and why: tests/full_scale/test_full_scale.py).
test-1b: setup synthetic-1b
	LLAMA3_FULL_SCALE_DIR=$(abspath $(SYNTHETIC_1B)) $(PY) -m pytest tests/full_scale -v -s

clean:
	rm -rf build
