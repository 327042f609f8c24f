# The two set-up commands are `make dev` and `make test`; see README.md.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
PROTOS := $(shell find proto -name '*.proto')

.PHONY: dev test proto lint typecheck buf-lint js-test js-bundle bench clean
JS := clients/js
JS_STAMP := $(JS)/node_modules/.installed

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

node_modules/.bin/buf: package.json
	npm install --no-audit --no-fund --loglevel=error
	touch $@

$(JS_STAMP): $(JS)/package.json $(JS)/package-lock.json
	cd $(JS) && npm ci --no-audit --no-fund --loglevel=error
	touch $@

## dev: create the virtual environment, install, and run the whole system locally
dev: $(STAMP)
	$(VENV)/bin/releasectl dev

## test: create the virtual environment, install, and run lint, types and every test
test: $(STAMP) node_modules/.bin/buf lint typecheck buf-lint js-test
	$(PY) -m pytest -n 2 --dist loadscope

## bench: run every benchmark at full size and record the results in docs/benchmarks.md
bench: $(STAMP)
	$(PY) -m bench --record docs/benchmarks.md

## proto: regenerate the Python code and type stubs under clients/releasecontrol/v1
proto: $(STAMP)
	PATH="$(CURDIR)/$(VENV)/bin:$$PATH" $(PY) -m grpc_tools.protoc -I proto \
		--python_out=clients --grpc_python_out=clients \
		--mypy_out=clients --mypy_grpc_out=clients \
		$(PROTOS)

lint: $(STAMP)
	$(VENV)/bin/ruff check clients server tests
	$(VENV)/bin/ruff format --check clients server tests
	$(VENV)/bin/lint-imports

typecheck: $(STAMP)
	$(VENV)/bin/mypy clients/releasecontrol clients/releasectl server/releasecontrol_server

buf-lint: node_modules/.bin/buf
	node_modules/.bin/buf lint

## js-test: build @releasecontrol/host (types checked by tsc) and run its Node and browser tests
js-test: $(JS_STAMP)
	cd $(JS) && npm test

## js-bundle: rebuild the browser bundle and copy it where `releasectl dev-host` serves it from
js-bundle: $(JS_STAMP)
	cd $(JS) && npm run build
	cp $(JS)/dist/releasecontrol-host.min.js clients/releasecontrol/static/releasecontrol-host.min.js

clean:
	rm -rf $(VENV) node_modules build *.egg-info $(JS)/node_modules $(JS)/dist
