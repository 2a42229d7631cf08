# framewire developer targets. `make help` lists them.
PYTHON ?= python3
VENV_PROTOC := .build/protoc
# Pinned so the generated code is reproducible and imports under every
# protobuf runtime from 4.25 to 7.x (newer protoc emits code that refuses
# older runtimes).
GRPCIO_TOOLS := grpcio-tools==1.62.3
PROTO_FILES := $(shell find protos -name '*.proto')
REPO ?= models
PORT ?= 8500
HOST ?= 127.0.0.1
METRICS_PORT ?= 9090

.PHONY: help install dev protos test test-fast test-unit test-integration serve demo screenshot clean

help:
	@echo "make install   install framewire with the server and demo extras"
	@echo "make dev       install framewire with every extra needed by the tests"
	@echo "make protos    regenerate the Python code under protos/"
	@echo "make test      run the test suite (what CI runs)"
	@echo "make test-fast run the unit tests only (see README, Development)"
	@echo "make demo      export the demo model into \$$(REPO) if it is empty"
	@echo "make serve     export the demo model if needed and start the server on \$$(PORT)"
	@echo "make screenshot  refresh docs/operator-page.png (the live page in headless chromium, under load)"

install:
	$(PYTHON) -m pip install -e '.[server,demo]'

dev:
	$(PYTHON) -m pip install -e '.[server,dev,demo]'

$(VENV_PROTOC)/bin/python:
	$(PYTHON) -m venv $(VENV_PROTOC)
	$(VENV_PROTOC)/bin/python -m pip install -q '$(GRPCIO_TOOLS)'

protos: $(VENV_PROTOC)/bin/python
	$(VENV_PROTOC)/bin/python -m grpc_tools.protoc -Iprotos \
		--python_out=protos --pyi_out=protos --grpc_python_out=protos $(PROTO_FILES)
	$(VENV_PROTOC)/bin/python protos/private_pool.py protos/framewire/oip/*_pb2.py

test:
	$(PYTHON) -m pytest

# The unit tests: no server, no network; the quick check before a full run.
test-fast test-unit:
	$(PYTHON) -m pytest tests/unit

test-integration:
	$(PYTHON) -m pytest tests/integration

demo:
	@if [ -z "$$(ls -A $(REPO) 2>/dev/null | grep -v README.md)" ]; then \
		framewire export --demo --repo $(REPO); \
	else echo "$(REPO) already holds models; not exporting the demo"; fi

serve: demo
	exec framewire serve --repo $(REPO) --host $(HOST) --port $(PORT) --metrics-port $(METRICS_PORT)

# The README's picture of the live page: the browser test, with a minute and
# a half of traffic first so the charts have a shape.
screenshot:
	FRAMEWIRE_PAGE_SCREENSHOT=$(CURDIR)/docs/operator-page.png FRAMEWIRE_PAGE_SCREENSHOT_AFTER=90 \
		$(PYTHON) -m pytest tests/integration/test_operator_page.py -k browser -p no:cacheprovider -q

clean:
	rm -rf .build build dist *.egg-info
