# Two commands on a fresh machine: `make run` serves, `make test` runs the whole suite.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
PORT   ?= 8000
HOST   ?= 127.0.0.1
# An operator's GRADSERVE_HOST / GRADSERVE_PORT win; PORT / HOST are the fallbacks.
GRADSERVE_HOST ?= $(HOST)
GRADSERVE_PORT ?= $(PORT)

.PHONY: run test bench lint clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --upgrade pip

# The same install step as the Dockerfile's: `pip install .` of the project.
$(VENV)/.installed-run: pyproject.toml | $(BIN)/python
	$(BIN)/pip install .
	touch $@

$(VENV)/.installed-test: pyproject.toml | $(BIN)/python
	$(BIN)/pip install -e '.[test]'
	touch $@ $(VENV)/.installed-run

# exec all the way down (sh -> gradserve serve -> gunicorn): gunicorn's master is make's own
# child, so the SIGTERM make forwards to its children stops it instead of orphaning it.
run: $(VENV)/.installed-run
	GRADSERVE_HOST='$(GRADSERVE_HOST)' GRADSERVE_PORT='$(GRADSERVE_PORT)' exec $(BIN)/gradserve serve

# The second pass runs the engine's op table, properties, lecture and higher-order tests, the
# MLP references and the HTTP oracle tests on array-api-strict, a namespace that refuses
# anything outside the array API standard: the proof that the engine runs on any backend
# (CuPy on a GPU) without one here. Its RuntimeWarnings (1/0 in the non-finite tests) are
# NumPy's under it: array-api-strict has no errstate.
STRICT_TESTS := tests/engine tests/flows/test_gradients.py tests/flows/test_mlp.py \
	tests/flows/test_higher_order.py tests/flows/test_step.py

test: $(VENV)/.installed-test
	$(BIN)/python -m pytest -q tests
	GRADSERVE_TEST_BACKEND=array-api-strict $(BIN)/python -m pytest -q \
		-W "ignore::RuntimeWarning" $(STRICT_TESTS)

bench: $(VENV)/.installed-test
	$(BIN)/python -m bench.engine
	$(BIN)/python -m bench.mlp
	$(BIN)/python -m bench.cache
	$(BIN)/python -m bench.http
	$(BIN)/python -m bench.hotpath
	$(BIN)/python -m bench.oip
	$(BIN)/python -m bench.batch
	$(BIN)/python -m bench.batch_http
	$(BIN)/python -m bench.scrape
	$(BIN)/python -m bench.soak
	$(BIN)/python -m bench.faults
	$(BIN)/python -m bench.overload
	$(BIN)/python -m bench.resources
	$(BIN)/python -m bench.slowclients
	$(BIN)/python -m bench.ops
	$(BIN)/python -m bench.onnx
	$(BIN)/python -m bench.step

lint: $(VENV)/.installed-test
	$(BIN)/ruff check service schemas gradserve tests bench
	$(BIN)/bandit -q -r service schemas gradserve -ll

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache
