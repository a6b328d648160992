# The README's commands. Each one sets up what it needs first.
VENV ?= $(or $(QFLARE_VENV),/var/cache/qflare/venv)
BIN := $(VENV)/bin

.PHONY: setup test demo lint stack-up stack-down

setup:
	bash infra/local/setup.sh

test: setup
	bash infra/local/run-tests.sh

demo: setup
	$(BIN)/qflare demo

lint: setup
	$(BIN)/ruff check qflare services edge tests bench
	$(BIN)/ruff format --check qflare services edge tests bench
	$(BIN)/mypy qflare services edge tests bench

stack-up: setup
	$(BIN)/qflare stack up

stack-down:
	$(BIN)/qflare stack down
