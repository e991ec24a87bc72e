# The two commands of the README:
#   make digits CORPUS=../shared/data/fsdd   install, then run the digits recipe end to end
#   make test                                install, then run the test suite
VENV ?= .venv
CORPUS ?=
PYTEST_ARGS ?=

.PHONY: setup digits test lock

setup:
	bash tools/setup.sh $(VENV)

digits: setup
	. $(VENV)/bin/activate && bash recipes/digits/run.sh $(if $(CORPUS),--corpus $(abspath $(CORPUS)))

test: setup
	. $(VENV)/bin/activate && python -m pytest -ra $(PYTEST_ARGS)

# Regenerate requirements.lock on purpose (resolve afresh, test in a fresh venv, then replace).
lock:
	bash tools/lock.sh
