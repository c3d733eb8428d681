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
# The robot side on Python 3.10 (Ubuntu 22.04 with Humble, JetPack 6): its own extras, no torch, pinned by
# its own lock; `sim` is there as the robot the ROS node tests drive. `make test` runs its tests there too.
ROBOT_VENV := .venv310
ROBOT_EXTRAS := ros,serve,vla,verifiers,sim,dev
ROBOT_CONSTRAINTS := constraints-py310.txt
# The tiny policy bundles the robot-side run reads (it has no torch to export them): tests/tiny_bundles.py.
TEST_BUNDLES := build/test-bundles

# $(call find_python,3.12): an interpreter of that version, PATH first, then pyenv's installs; pyenv shims
# fail unless a version is selected, so each candidate must actually run.
define find_python
for c in python$(1) \
         "$$(command -v pyenv >/dev/null && pyenv root)/versions/"$(1).*/bin/python$(1) \
         /usr/bin/python$(1) /usr/local/bin/python$(1); do \
  if [ -n "$$c" ] && "$$c" -c 'import sys; assert sys.version_info[:2] == tuple(map(int, "$(1)".split(".")))' \
      2>/dev/null; then echo "$$c"; exit 0; fi; \
done; exit 1
endef

# An existing .venv of another Python (say 3.11) is replaced rather than silently reused.
VENV_OK := $(shell [ ! -e $(VENV)/bin/python ] || $(VENV)/bin/python -c 'import sys; sys.exit(sys.version_info[:2] != (3, 12))' 2>/dev/null && echo ok)
ifneq ($(VENV_OK),ok)
$(info $(VENV) is not a Python 3.12 environment: recreating it)
$(shell rm -rf $(VENV))
endif

.PHONY: demo test test-robot test-slow artifacts bench ros install-core install-train install-dev install-all lock clean help

help:
	@echo "make demo    the main job: the sim suite on the shipped default policy, with and without its verifier"
	@echo "make test    run the test suite, ROS tests included (installs .venv with every extra but gpu),"
	@echo "             then the robot-side tests on Python 3.10 (.venv310)"
	@echo "make ros     install the ros extra and build the vendored ROS messages"
	@echo "make bench   run the latency benchmark, writing build/bench.json"

# $(call make_venv,VERSION,DIR,WHY,HOW): a venv of that Python in DIR, or an error saying why it is needed
# and how to install it.
define make_venv
	@py="$$( $(call find_python,$(1)) )" || { \
	  echo "error: Python $(1) is required ($(3))." >&2; \
	  echo "Install it, e.g. $(4), then rerun." >&2; \
	  exit 1; }; \
	echo "creating $(2) with $$py"; "$$py" -m venv $(2)
	$(2)/bin/python -m pip install -q --upgrade pip
endef

$(VENV)/bin/python:
	$(call make_venv,3.12,$(VENV),lerobot 0.6 and the ROS 2 Jazzy rclpy wheels need it,'apt-get install python3.12 python3.12-venv' or 'pyenv install 3.12')

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

$(ROBOT_VENV)/bin/python:
	$(call make_venv,3.10,$(ROBOT_VENV),for the robot-side tests: the Python of Humble and JetPack 6,'pyenv install 3.10' or 'apt-get install python3.10-venv' on Ubuntu 22.04)

$(ROBOT_VENV)/.installed: $(ROBOT_VENV)/bin/python pyproject.toml $(ROBOT_CONSTRAINTS)
	$(ROBOT_VENV)/bin/python -m pip install -q -c $(ROBOT_CONSTRAINTS) -e ".[$(ROBOT_EXTRAS)]"
	$(ROBOT_VENV)/bin/python -m pip install -q --no-deps openpi-client==0.1.2
	@touch $@

$(ROBOT_VENV)/.built-msgs: $(MSG_SOURCES) scripts/build_ros_msgs.sh | $(ROBOT_VENV)/.installed
	scripts/build_ros_msgs.sh $(ROBOT_VENV)
	@touch $@

demo: $(VENV)/.installed-sim
	$(VENV)/bin/taco demo

# The full suite on 3.12, then the robot-side tests (everything not marked `workstation`) on 3.10.
test: $(VENV)/.installed-$(TEST_EXTRAS) $(VENV)/.built-msgs $(VENV)/.installed-openpi-client \
      $(ROBOT_VENV)/.installed $(ROBOT_VENV)/.built-msgs
	$(PY) -m pytest -m "$(TEST_MARKERS)"
	$(PY) tests/tiny_bundles.py $(TEST_BUNDLES)
	TACO_TEST_BUNDLES=$(TEST_BUNDLES) $(ROBOT_VENV)/bin/python -m pytest -m "($(TEST_MARKERS)) and not workstation"

# Only the robot-side run (Python 3.10), after `make test` has built both environments once.
test-robot: $(VENV)/.installed-$(TEST_EXTRAS) $(ROBOT_VENV)/.installed $(ROBOT_VENV)/.built-msgs
	$(PY) tests/tiny_bundles.py $(TEST_BUNDLES)
	TACO_TEST_BUNDLES=$(TEST_BUNDLES) $(ROBOT_VENV)/bin/python -m pytest -m "($(TEST_MARKERS)) and not workstation"

# The long suites: the tests marked `slow` (none at present: collecting them exits 5, which is not a failure
# here), then the ROS tests 20 times in a row beside two CPU-bound processes.
test-slow: $(VENV)/.installed-$(TEST_EXTRAS) $(VENV)/.built-msgs $(VENV)/.installed-openpi-client
	@$(PY) -m pytest -q -m slow --collect-only >/dev/null 2>&1; rc=$$?; \
	  if [ $$rc = 5 ]; then echo "no test is marked slow"; elif [ $$rc = 0 ]; then $(PY) -m pytest -m slow; \
	  else echo "collecting the slow tests failed (pytest exit $$rc)"; exit $$rc; fi
	scripts/stress_ros_tests.sh 20 2

# Rebuild the shipped bundles: record -> train -> features -> verifiers; rerun to resume.
artifacts: $(VENV)/.installed-train+sim+dev
	$(VENV)/bin/taco artifacts --out artifacts

bench: $(VENV)/.installed-train
	$(VENV)/bin/taco bench --json build/bench.json

# Re-pin after changing dependencies: installs unpinned into a scratch venv and freezes it (both Pythons).
# The 3.10 lock takes numpy 1.x: Humble's own binary packages (rclpy, its messages, cv_bridge) are built
# against Ubuntu 22.04's numpy 1.21 and do not import under numpy 2, so the robot side is tested on the
# numpy it will meet there.
lock:
	rm -rf build/lock-venv build/lock-venv310
	"$$( $(call find_python,3.10) )" -m venv build/lock-venv310
	build/lock-venv310/bin/pip install -q -e ".[$(ROBOT_EXTRAS)]" "numpy<2"
	build/lock-venv310/bin/python scripts/freeze.py > $(ROBOT_CONSTRAINTS)
	rm -rf build/lock-venv310
	"$$( $(call find_python,3.12) )" -m venv build/lock-venv
	build/lock-venv/bin/pip install -q -e ".[train,sim,ray,ros,vla,serve,verifiers,dev]"
	build/lock-venv/bin/python scripts/freeze.py > $(CONSTRAINTS)
	rm -rf build/lock-venv

clean:
	rm -rf $(VENV) $(ROBOT_VENV) build .pytest_cache
