# The two commands of the README:
#   make digits CORPUS=../shared/data/fsdd   install, then run the digits recipe end to end
#   make test                                install, then run the test suite
VENV ?= .venv
CORPUS ?=
PYTEST_ARGS ?=

.PHONY: setup digits test lock bench

setup:
	bash tools/setup.sh $(VENV)

digits: setup
	. $(VENV)/bin/activate && bash recipes/digits/run.sh $(if $(CORPUS),--corpus $(abspath $(CORPUS)))

test: setup
	. $(VENV)/bin/activate && python -m pytest -ra $(PYTEST_ARGS)

# Regenerate requirements.lock on purpose (resolve afresh, test in a fresh venv, then replace).
lock:
	bash tools/lock.sh

# Every benchmark against its peers (benchmarks/setup_peers.sh builds fairseq's venv first),
# then one summary table; each result is also kept as JSON under benchmarks/results/.
BENCH_OUT ?= benchmarks/results
bench: setup
	. $(VENV)/bin/activate && mkdir -p $(BENCH_OUT) \
	  && python benchmarks/bench_score.py --json $(BENCH_OUT)/score.json \
	  && python benchmarks/bench_decode.py --json $(BENCH_OUT)/decode.json \
	  && python benchmarks/bench_featurize.py --rounds 3 --compare-amp auto --json $(BENCH_OUT)/featurize.json \
	  && python benchmarks/bench_pretrain_step.py --rounds 3 --json $(BENCH_OUT)/pretrain_step.json \
	  && python benchmarks/bench_optimizer_step.py --json $(BENCH_OUT)/optimizer_step.json \
	  && python benchmarks/bench_int8.py --json $(BENCH_OUT)/int8.json \
	  && python benchmarks/bench_small_train_step.py --json $(BENCH_OUT)/small_train_step.json \
	  && python benchmarks/summary.py $(BENCH_OUT)/score.json $(BENCH_OUT)/decode.json \
	       $(BENCH_OUT)/featurize.json $(BENCH_OUT)/pretrain_step.json $(BENCH_OUT)/optimizer_step.json \
	       $(BENCH_OUT)/int8.json $(BENCH_OUT)/small_train_step.json \
	       | tee $(BENCH_OUT)/summary.md
