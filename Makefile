# Entry points: `make demo` (the main job) and `make test`. Each creates .venv with Python 3.12 when
# missing and installs what it needs, pinned by constraints.txt.

SHELL := /bin/bash
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
CONSTRAINTS := constraints.txt
# Test markers CI runs by default; `make test-slow` adds the long suites.
TEST_MARKERS ?= not slow and not gpu and not hardware
# Extras the test install carries: everything but gpu (the ROS tests run in CI too).
TEST_EXTRAS := train+sim+ray+ros+vla+serve+dev

# A Python 3.12 interpreter: PATH first, then pyenv's installs; pyenv shims fail unless a version is
# selected, so each candidate must actually run.
define find_python
for c in python3.12 \
         "$$(command -v pyenv >/dev/null && pyenv root)/versions/"3.12*/bin/python3.12 \
         /usr/bin/python3.12 /usr/local/bin/python3.12; do \
  if [ -n "$$c" ] && "$$c" -c 'import sys; assert sys.version_info[:2] == (3, 12)' 2>/dev/null; then \
    echo "$$c"; exit 0; fi; \
done; exit 1
endef

# An existing .venv of another Python (say 3.11) is replaced rather than silently reused.
VENV_OK := $(shell [ ! -e $(VENV)/bin/python ] || $(VENV)/bin/python -c 'import sys; sys.exit(sys.version_info[:2] != (3, 12))' 2>/dev/null && echo ok)
ifneq ($(VENV_OK),ok)
$(info $(VENV) is not a Python 3.12 environment: recreating it)
$(shell rm -rf $(VENV))
endif

.PHONY: demo test test-slow artifacts bench ros install-core install-train install-dev install-all lock clean help

help:
	@echo "make demo    the main job: the sim suite on the shipped default policy, with and without its verifier"
	@echo "make test    run the test suite, ROS tests included (installs .venv with every extra but gpu)"
	@echo "make ros     install the ros extra and build the vendored ROS messages"
	@echo "make bench   run the latency benchmark, writing build/bench.json"

$(VENV)/bin/python:
	@py="$$( $(find_python) )" || { \
	  echo "error: Python 3.12 is required (lerobot 0.6 and the ROS 2 Jazzy rclpy wheels need it)." >&2; \
	  echo "Install it, e.g. 'apt-get install python3.12 python3.12-venv' or 'pyenv install 3.12', then rerun." >&2; \
	  exit 1; }; \
	echo "creating $(VENV) with $$py"; "$$py" -m venv $(VENV)
	$(PIP) install -q --upgrade pip

# One stamp per extra set, rebuilt when the project or the pins change.
$(VENV)/.installed-%: $(VENV)/bin/python pyproject.toml $(CONSTRAINTS)
	$(PIP) install -q -c $(CONSTRAINTS) -e ".[$(subst +,$(comma),$*)]"
	@touch $@

comma := ,

# openpi's own client, for the interoperability tests of `taco serve`: it pins numpy<2 but runs on numpy 2,
# so it is installed without its dependencies (websockets and msgpack come with the serve extra).
$(VENV)/.installed-openpi-client: | $(VENV)/bin/python
	$(PIP) install -q --no-deps openpi-client==0.1.2
	@touch $@

install-core: $(VENV)/bin/python
	$(PIP) install -q -c $(CONSTRAINTS) -e .
install-train: $(VENV)/.installed-train
install-dev: $(VENV)/.installed-$(TEST_EXTRAS) $(VENV)/.built-msgs $(VENV)/.installed-openpi-client
install-all: $(VENV)/.installed-all $(VENV)/.built-msgs

# The vendored ROS message packages (interbotix_xs_msgs), built into the venv with the rosidl wheels.
MSG_SOURCES := $(shell find ros_nodes/msgs -type f 2>/dev/null)
# Listed after an install stamp that carries the ros extra (make builds prerequisites in order).
$(VENV)/.built-msgs: $(MSG_SOURCES) scripts/build_ros_msgs.sh | $(VENV)/bin/python
	scripts/build_ros_msgs.sh $(VENV)
	@touch $@

ros: $(VENV)/.installed-sim+ros $(VENV)/.built-msgs

demo: $(VENV)/.installed-sim
	$(VENV)/bin/taco demo

test: $(VENV)/.installed-$(TEST_EXTRAS) $(VENV)/.built-msgs $(VENV)/.installed-openpi-client
	$(PY) -m pytest -m "$(TEST_MARKERS)"

test-slow: $(VENV)/.installed-$(TEST_EXTRAS) $(VENV)/.built-msgs $(VENV)/.installed-openpi-client
	$(PY) -m pytest -m "slow"

# Rebuild the shipped bundles: record -> train -> features -> verifiers; rerun to resume.
artifacts: $(VENV)/.installed-train+sim+dev
	$(VENV)/bin/taco artifacts --out artifacts

bench: $(VENV)/.installed-train
	$(VENV)/bin/taco bench --json build/bench.json

# Re-pin after changing dependencies: installs unpinned into a scratch venv and freezes it.
lock:
	rm -rf build/lock-venv
	"$$( $(find_python) )" -m venv build/lock-venv
	build/lock-venv/bin/pip install -q -e ".[train,sim,ray,ros,vla,serve,dev]"
	build/lock-venv/bin/python scripts/freeze.py > $(CONSTRAINTS)
	rm -rf build/lock-venv

clean:
	rm -rf $(VENV) build .pytest_cache
