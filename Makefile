# Pulse — every target does its own setup (venv, packages; Kafka jars are fetched by `pulse broker`).
PY ?= python3.11
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test test-unit test-kafka4 lint typecheck check bench clean

$(STAMP): pyproject.toml
	@command -v $(PY) >/dev/null || { echo "Python 3.11 is required: install python3.11 or run make PY=python3"; exit 1; }
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev]'
	touch $(STAMP)

venv: $(STAMP)

demo: $(STAMP)
	$(BIN)/pulse demo

test: $(STAMP)
	$(BIN)/pytest tests -q

test-unit: $(STAMP)
	$(BIN)/pytest tests -q -m "not integration and not kafka4"

test-kafka4: $(STAMP)
	PULSE_TEST_KAFKA_VERSION=$${PULSE_TEST_KAFKA_VERSION:-4.4.0} $(BIN)/pytest tests/integration -q -m integration

lint: $(STAMP)
	$(BIN)/ruff check stream agents schemas tests bench
	$(BIN)/ruff format --check stream agents schemas tests bench

typecheck: $(STAMP)
	$(BIN)/mypy

check: lint typecheck test

clean:
	rm -rf $(VENV) .pulse .pytest_cache .mypy_cache .ruff_cache
