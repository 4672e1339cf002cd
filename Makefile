# The two set-up commands of the README: `make run` and `make test`. Each installs what it needs.
VENV := .venv
STAMP := $(VENV)/.installed
DATADIR ?= data
LISTENPORT ?= 2801
GRPCPORT ?= 5060

.PHONY: run test lint bench setup

$(STAMP): pyproject.toml scripts/setup.sh
	bash scripts/setup.sh
	touch $(STAMP)

setup: $(STAMP)

# The hub, and as root the detector publishing to it; Ctrl-C stops both (`lanner run -h`).
# RUN_ARGS: more options, e.g. RUN_ARGS="--listenaddress 0.0.0.0 -- --rules my_rules.yaml"
# (after --: options of `lanner detect`).
run: $(STAMP)
	@$(VENV)/bin/lanner run --datadir $(DATADIR) --listenport $(LISTENPORT) --grpcport $(GRPCPORT) $(RUN_ARGS)

test: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/pytest -q

lint: $(STAMP)
	$(VENV)/bin/ruff check .

bench: $(STAMP)
	$(VENV)/bin/python bench/hub.py
	$(VENV)/bin/python bench/store.py
	$(VENV)/bin/python bench/ui.py
	$(VENV)/bin/python bench/outputs.py
	$(VENV)/bin/python bench/engine.py
	$(VENV)/bin/python bench/detector.py
	$(VENV)/bin/python bench/k8saudit.py
	$(VENV)/bin/python bench/e2e.py
