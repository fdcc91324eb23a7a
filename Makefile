# Pulse — every target does its own setup (venv, packages; Kafka jars are fetched by `pulse broker`).
PY ?= python3.11
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test test-unit test-kafka4 lint typecheck check bench quality soak clean deps

# Debian packages the tests need: a real Prometheus (tests/integration/test_dashboards.py)
# and headless Chromium with its driver. Installed by `make deps` when missing; so are
# Node.js and npm (pulse.js's logic tests, Segment's analytics-node client) when `node`
# or `npm` is not on PATH (a NodeSource nodejs package brings both).
DEB_PACKAGES ?= prometheus chromium chromium-driver
SUDO := $(if $(filter 0,$(shell id -u)),,sudo)
APT := $(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get

$(STAMP): pyproject.toml
	@command -v $(PY) >/dev/null || { echo "Python 3.11 is required: install python3.11 or run make PY=python3"; exit 1; }
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev]'
	touch $(STAMP)

venv: $(STAMP)

# apt-get update only when the package lists are empty or an install from them fails.
deps:
	@missing=""; \
	for p in $(DEB_PACKAGES); do \
	  dpkg-query -W -f='$${Status}\n' "$$p" 2>/dev/null | grep -qx 'install ok installed' \
	    || missing="$$missing $$p"; \
	done; \
	command -v node >/dev/null && command -v npm >/dev/null || missing="$$missing nodejs npm"; \
	if [ -z "$$missing" ]; then echo "deps: $(DEB_PACKAGES) node npm installed"; exit 0; fi; \
	command -v apt-get >/dev/null || { echo "deps: no apt-get; install$$missing by hand"; exit 1; }; \
	lists=$$(find /var/lib/apt/lists -maxdepth 1 -name '*_Packages*' 2>/dev/null | head -n 1); \
	echo "deps: installing$$missing"; \
	if [ -z "$$lists" ] || ! $(APT) install -y --no-install-recommends $$missing; then \
	  $(APT) update && $(APT) install -y --no-install-recommends $$missing; \
	fi

demo: $(STAMP)
	$(BIN)/pulse demo

test: $(STAMP) deps
	$(BIN)/pytest tests -q --durations=15

test-unit: $(STAMP)
	$(BIN)/pytest tests -q -m "not integration and not kafka4"

test-kafka4: $(STAMP) deps
	PULSE_TEST_KAFKA_VERSION=$${PULSE_TEST_KAFKA_VERSION:-4.4.0} $(BIN)/pytest tests/integration -q -m kafka4 --durations=15

lint: $(STAMP)
	$(BIN)/ruff check stream agents schemas tests bench
	$(BIN)/ruff format --check stream agents schemas tests bench

typecheck: $(STAMP)
	$(BIN)/mypy

check: lint typecheck test

clean:
	rm -rf $(VENV) .pulse .pytest_cache .mypy_cache .ruff_cache

# Pulse vs a raw aiokafka consumer vs Quix Streams on one local broker (not part of the tests);
# QUICK=1: 200k events, a few minutes. Results also go to bench/results/ (git-ignored).
bench: $(STAMP)
	$(BIN)/python -m bench.windowed_counts $(if $(QUICK),--quick,) $(if $(PROFILE),--profile,)

# Trigger, propensity and bandit quality against the simulator's ground truth, no Kafka
# (bench/quality.py; a few minutes, QUICK=1: about two). Ends with one QUALITY line.
quality: $(STAMP)
	$(BIN)/python -m bench.quality $(if $(QUICK),--quick,)

# One worker under a steady simulated rate: RSS slope and consumer lag (samples in bench/results/).
SOAK_MINUTES ?= 20
SOAK_RATE ?= 2000
soak: $(STAMP)
	$(BIN)/python -m bench.soak --minutes $(SOAK_MINUTES) --rate $(SOAK_RATE)
