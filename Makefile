# The two entry points the README opens with. Both set up everything they need.
.PHONY: demo test lint bench setup

setup:
	./scripts/bootstrap

demo: setup
	.venv/bin/python scripts/demo.py

lint: setup
	.venv/bin/ruff check src tests bench
	.venv/bin/mypy

test: lint
	.venv/bin/pytest -n 2 --dist loadgroup -q

bench: setup
	.venv/bin/python bench/run_all.py
