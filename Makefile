# Llama 3 from scratch. Two commands on a fresh machine: `make run` and `make test`.
# Everything is installed into .venv with python3 -m venv + pip from requirements.txt.

PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
KERNEL := llama3-from-scratch
INSTALLED := $(VENV)/.installed
DEMO := build/llama3-demo/consolidated.00.pth
NOTEBOOKS := $(sort $(wildcard notebooks/[0-9][0-9]_*.ipynb))

.PHONY: setup run test test-ui lab demo images clean

setup: $(INSTALLED) $(DEMO)

$(INSTALLED): requirements.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -r requirements.txt
	$(PY) -m ipykernel install --sys-prefix --name $(KERNEL) --display-name "Python (llama3-from-scratch)" >/dev/null
	touch $@

# The demo checkpoint: Llama 3 in miniature, expanded from the committed trained parameters.
demo: $(DEMO)
$(DEMO): $(INSTALLED) scripts/build_demo_checkpoint.py scripts/demo_checkpoint/trained.pt scripts/demo_checkpoint/params.json
	$(PY) scripts/build_demo_checkpoint.py

# Executes every notebook in a fresh kernel, writes build/executed, build/html and
# build/run-summary.json, and prints the top 5 next tokens. Honours LLAMA3_DIR and LLAMA3_PROMPT.
run: setup
	$(PY) scripts/run_notebooks.py

# Unit and parity tests, then nbval re-executes every notebook and compares its stored outputs.
# Always the demo checkpoint and the default prompt: the stored outputs come from them.
# nbval settings: --nbval-current-env runs the kernel of this venv; tests/nbval_sanitize.cfg
# says what text is normalised before comparison and why.
test: setup
	env -u LLAMA3_DIR -u LLAMA3_PROMPT $(PY) -m pytest tests $(NOTEBOOKS) --nbval --nbval-current-env \
		--nbval-sanitize-with tests/nbval_sanitize.cfg

# The attention explorer (notebook 10) in a real browser: JupyterLab on 127.0.0.1 with this
# project's kernel, Debian's Chromium (installed here if missing; Playwright cannot download
# browsers on these machines) driven by Playwright. Screenshots go to build/ui/.
test-ui: setup
	@test -x /usr/bin/chromium || (apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y chromium)
	env -u LLAMA3_DIR -u LLAMA3_PROMPT LLAMA3_TEST_UI=1 $(PY) -m pytest tests/ui -v

lab: setup
	cd notebooks && ../$(VENV)/bin/jupyter lab

clean:
	rm -rf build
