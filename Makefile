# Two commands for a newcomer:  `make demo`  and  `make test`.
# Each builds what it needs first (two venvs: .venv = standalone diffusers stack, .venv-host = the WebUI's pins).
PY ?= python3
VENV := .venv
HOST := .venv-host
TORCH := torch==2.13.0

.PHONY: demo test lint test-standalone test-host test-webui test-comfy venvs clean

$(VENV)/.ok: pyproject.toml
	$(PY) -m venv $(VENV)
	$(VENV)/bin/pip install -q $(TORCH)
	$(VENV)/bin/pip install -q -e ".[standalone,rank,test]"
	$(VENV)/bin/pip install -q --no-deps "open_clip_torch==3.3.0" || echo "open_clip vocab not installed: byte-level tokenizer"
	touch $@

$(HOST)/.ok: pyproject.toml
	$(PY) -m venv $(HOST)
	$(HOST)/bin/pip install -q $(TORCH)
	$(HOST)/bin/pip install -q -e ".[host,test]"
	@! $(HOST)/bin/python -c "import diffusers" 2>/dev/null || (echo "diffusers must not be in the host-like venv" && exit 1)
	touch $@

venvs: $(VENV)/.ok $(HOST)/.ok

demo: $(VENV)/.ok
	$(VENV)/bin/i4vgen generate --prompt "a corgi running on the beach" --out out/demo --ranker none

# ruff (pyflakes, import order, line length; settings in pyproject.toml): a finding fails `make test`.
lint: $(VENV)/.ok
	$(VENV)/bin/ruff check .

test-standalone: $(VENV)/.ok
	$(VENV)/bin/python -m pytest -q tests/core tests/rankers tests/standalone

test-host: $(HOST)/.ok
	$(HOST)/bin/python -m pytest -q tests/core tests/rankers tests/host tests/comfy tests/webui_api tests/comfy_api

# The live suite: a running AUTOMATIC1111 + AnimateDiff + I4VGen at I4VGEN_WEBUI_URL (docs/development.md).
test-webui: $(VENV)/.ok
	$(VENV)/bin/pip install -q -e ".[live]"
	$(VENV)/bin/python -m pytest -v -rs tests/webui_api

# The live ComfyUI suite: a running ComfyUI + AnimateDiff-Evolved + this node pack at I4VGEN_COMFY_URL (docs/comfyui.md).
test-comfy: $(VENV)/.ok
	$(VENV)/bin/pip install -q -e ".[live]"
	$(VENV)/bin/python -m pytest -v -rs tests/comfy_api

test: lint test-standalone test-host

clean:
	rm -rf $(VENV) $(HOST) out
