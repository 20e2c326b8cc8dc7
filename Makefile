# Every target sets up what it needs, so `make demo` and `make test` work on a fresh machine.
# The Makefile only calls the CLI and pytest; the work lives in train/, convert/, device/, firmware_sim/.
PY      ?= python3
VENV    := .venv
BIN     := $(VENV)/bin
RUNS    ?= runs
PRESET  ?= default
FMNIST  := /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz
STAMP   := $(VENV)/.installed

.PHONY: setup data sshd test train adapt convert simulate demo bench flash clean help

help:
	@echo "make demo   set up, then run the whole pipeline on the bundled data"
	@echo "make test   set up, then run the test suite"
	@echo "make train  pretrain the default preset (train/presets/$(PRESET).yaml)"
	@echo "make adapt  all six adaptation methods on Animal-MNIST -> results/adapt.md"
	@echo "make convert  the adapted TinyTL-L+B checkpoint -> an int8 bundle in $(RUNS)/bundle"
	@echo "make simulate  learn Animal-MNIST on a simulated 256 KB MCU (mcu-256k) from the pretrained model"
	@echo "make bench  measurements (tables in bench/results/)"
	@echo "make flash HOST=user@board [BUNDLE=$(RUNS)/bundle] [PROFILE=rpi4-4g] [SERVICE=1]   deploy to a Pi / Jetson"

setup: $(STAMP) data

$(STAMP): pyproject.toml
	@echo "== creating $(VENV) with $$($(PY) --version)"
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[host,dev]'
	@# Animal-MNIST: we read its data files directly; its loader imports TensorFlow and downloads.
	$(BIN)/pip install -q --no-deps animal-mnist==0.4
	@touch $@

data: $(FMNIST)

$(FMNIST):
	@if [ "$$(id -u)" = 0 ]; then \
	  echo "== installing Debian package dataset-fashion-mnist"; \
	  apt-get install -y -q dataset-fashion-mnist >/dev/null || (apt-get update -q >/dev/null && apt-get install -y -q dataset-fashion-mnist >/dev/null); \
	else \
	  echo "Fashion-MNIST is missing: run 'sudo apt-get install dataset-fashion-mnist' and retry."; exit 1; \
	fi

# The flash tests start a real OpenSSH server on 127.0.0.1 (they skip, saying why, where it cannot be installed).
sshd:
	@if ! [ -x /usr/sbin/sshd ] && [ "$$(id -u)" = 0 ]; then \
	  echo "== installing Debian package openssh-server (for the flash tests)"; \
	  apt-get install -y -q openssh-server >/dev/null || (apt-get update -q >/dev/null && apt-get install -y -q openssh-server >/dev/null); \
	fi

test: setup sshd
	@# pytest exits 5 when it collects nothing: that is not a failure of the code under test.
	$(BIN)/python -m pytest -q --durations=10 tests; rc=$$?; [ $$rc -eq 5 ] && rc=0; exit $$rc

# --resume makes the target idempotent: a finished run is re-evaluated, a crashed one continues.
train: setup
	$(BIN)/python -m train pretrain --preset $(PRESET) --out $(RUNS)/pretrain --resume

adapt: train
	$(BIN)/python -m train sweep --from $(RUNS)/pretrain/model.pt --data animal-mnist --out $(RUNS)/adapt --report results

convert: adapt
	$(BIN)/python -m convert --checkpoint $(RUNS)/adapt/tinytl-lb-b8/model.pt --out $(RUNS)/bundle --force

ANIMALS := Bear,Bird,Cat,Cow,Dog,Elephant,Giraffe,Horse,Sheep,Zebra
SIM     := $(RUNS)/sim/mcu-256k

$(RUNS)/data/animal_train.npz: $(STAMP)
	$(BIN)/python -m train export-data --data animal-mnist --out $(RUNS)/data/animal

# The main on-device story: pretrained on the host, a new task (Animal-MNIST) learned at batch 1 on the target.
simulate: train $(RUNS)/data/animal_train.npz
	$(BIN)/python -m convert --checkpoint $(RUNS)/pretrain/model.pt --method tinytl-b --classes 10 --labels $(ANIMALS) \
	  --data animal-mnist --out $(RUNS)/bundle-new-tinytl-b --force
	$(BIN)/python -m firmware_sim run --bundle $(RUNS)/bundle-new-tinytl-b --profile mcu-256k --steps 500 --out $(SIM) \
	  --data $(RUNS)/data/animal_train.npz --eval-data $(RUNS)/data/animal_test.npz --eval-limit 500
	@echo "== FT-Full on the same target must be refused before any step:"
	! $(BIN)/python -m firmware_sim run --bundle $(RUNS)/bundle-new-tinytl-b --profile mcu-256k --steps 1 --trainables ft-full \
	  --out $(RUNS)/sim/ft-full --data $(RUNS)/data/animal_train.npz

demo: convert simulate
	@echo "== demo finished:"
	@echo "   pretrained model    $(RUNS)/pretrain/model.pt (+ model.json)"
	@echo "   adaptation report   results/adapt.md, plot results/adapt.png"
	@echo "   int8 bundle         $(RUNS)/bundle/ (conversion report: $(RUNS)/bundle/report.md)"
	@echo "   MCU simulation      $(SIM)/report.md (plots: $(SIM)/*.png)"

bench: setup
	$(BIN)/python -m bench

HOST    ?=
BUNDLE  ?= $(RUNS)/bundle
PROFILE ?= rpi-zero2w
SERVICE ?=
flash: $(STAMP)
	@test -n "$(HOST)" || { echo "usage: make flash HOST=user@board [BUNDLE=$(RUNS)/bundle] [PROFILE=rpi4-4g] [SERVICE=1]"; exit 2; }
	$(BIN)/python -m flash --host '$(HOST)' --bundle '$(BUNDLE)' --profile '$(PROFILE)' $(if $(SERVICE),--service)

clean:
	rm -rf $(VENV) $(RUNS) bench/results
