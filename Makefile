# The two entry points the README opens with. Both set up everything they need.
.PHONY: demo test lint bench setup fuzz

setup:
	./scripts/bootstrap

demo: setup
	.venv/bin/python scripts/demo.py
	.venv/bin/python scripts/demo_segment.py

lint: setup
	.venv/bin/ruff check src tests bench
	.venv/bin/ruff format --check src tests bench
	.venv/bin/mypy

test: lint
	.venv/bin/pytest -n 2 --dist loadgroup -q --durations=30

bench: setup
	.venv/bin/python bench/run_all.py

# The long API fuzzing run (tests/controller/test_fuzz.py): FUZZ_EXAMPLES random
# requests per operation and credential on top of the boundary cases, with a new
# random seed each run, against a real controller on SQLite and on PostgreSQL.
# `make test` runs the same harness with 5 examples and a fixed seed on PostgreSQL
# only (about a minute). A failure prints its seed; replay it with
# `make fuzz FUZZ_SEED=<seed>` (FUZZ_DATABASES=postgresql for one engine).
FUZZ_EXAMPLES ?= 200
FUZZ_SEED ?= random
FUZZ_DATABASES ?= sqlite,postgresql
fuzz: setup
	ZEROGATE_FUZZ_EXAMPLES=$(FUZZ_EXAMPLES) ZEROGATE_FUZZ_SEED=$(FUZZ_SEED) \
	  ZEROGATE_FUZZ_DATABASES=$(FUZZ_DATABASES) \
	  .venv/bin/pytest -n 2 --dist loadgroup -q -rA --timeout 7200 tests/controller/test_fuzz.py
