# The README's commands. Each one sets up what it needs first.
VENV ?= $(or $(QFLARE_VENV),/var/cache/qflare/venv)
BIN := $(VENV)/bin

.PHONY: setup test test-long demo lint docs upgrade-lock stack-up stack-down

setup:
	bash infra/local/setup.sh

test: setup
	bash infra/local/run-tests.sh -m "not long"

# The tests that take minutes each (the hostile-record suite), against the same stack.
test-long: setup
	bash infra/local/run-tests.sh -m long

demo: setup
	$(BIN)/qflare demo

lint: setup
	bash infra/local/lint.sh

# Pages generated from the code (a unit test fails when one is stale).
docs: setup
	$(BIN)/python -c "from qflare.reasons import table; print(table(), end='')" > docs/rejections.md

# Move every role's lock (requirements/*.lock) to the newest versions pyproject.toml allows,
# install them and run the whole suite on the result; commit the locks only if it passed.
upgrade-lock: setup
	bash infra/local/lock.sh --upgrade
	$(MAKE) test

stack-up: setup
	$(BIN)/qflare stack up

stack-down:
	$(BIN)/qflare stack down
