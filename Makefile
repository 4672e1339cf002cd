# The two set-up commands of the README: `make run` and `make test`. Each installs what it needs.
VENV := .venv
STAMP := $(VENV)/.installed
DATADIR ?= data

.PHONY: run test lint bench setup

$(STAMP): pyproject.toml scripts/setup.sh
	bash scripts/setup.sh
	touch $(STAMP)

setup: $(STAMP)

run: $(STAMP)
	@echo "Lanner hub: http://127.0.0.1:2801  (gRPC :5060, data in $(DATADIR)/)"
	@echo "Send a test alert:  curl -s -XPOST http://127.0.0.1:2801/test"
	$(VENV)/bin/lanner sidekick --datadir $(DATADIR)

test: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/pytest -q

lint: $(STAMP)
	$(VENV)/bin/ruff check .

bench: $(STAMP)
	$(VENV)/bin/python bench/hub.py
	$(VENV)/bin/python bench/store.py
	$(VENV)/bin/python bench/outputs.py
	$(VENV)/bin/python bench/engine.py
	$(VENV)/bin/python bench/detector.py
