# audio-cls: `make help` lists the targets.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp
RUNS   ?= runs
PIP_INSTALL := $(BIN)/python -m pip install --disable-pip-version-check -q -c constraints.txt

.DEFAULT_GOAL := help
.PHONY: help install demo test test-all lint format bench leaderboard clean

help: ## Show this help
	@grep -E '^[a-zA-Z_-]+:.*?## ' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*?## "}; {printf "  \033[36m%-10s\033[0m %s\n", $$1, $$2}'

install: $(STAMP) ## Create .venv and install audio-cls, every extra but cuda, with the tested pins

# Every extra but `cuda` (it needs nvcc), so the tests of each optional feature run everywhere.
$(STAMP): pyproject.toml constraints.txt
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(PIP_INSTALL) -e '.[dev,all]'
	@touch $@

demo: install ## Train, test and predict on the embedded synthetic set (no download)
	$(BIN)/audio-cls fit --config configs/quickstart.yaml
	$(BIN)/audio-cls classify --ckpt $(RUNS)/quickstart/latest/checkpoints/best.ckpt \
		data/synthetic/audio/*/*_000.wav --out $(RUNS)/quickstart/latest/demo_predictions.csv

test: install ## Run the fast test suite (slow and gpu tests excluded)
	$(BIN)/python -m pytest

test-all: install ## Run every test, slow ones included (gpu ones need CUDA)
	$(BIN)/python -m pytest -m 'not gpu'

lint: install ## Static checks
	$(BIN)/ruff check audio_cls tests bench
	$(BIN)/ruff format --check audio_cls tests bench

format: install ## Apply the formatter and safe lint fixes
	$(BIN)/ruff format audio_cls tests bench
	$(BIN)/ruff check --fix audio_cls tests bench

bench: install ## Benchmarks on ESC-10 (DATA=path/to/esc10), figures printed
	$(BIN)/python bench/data_throughput.py --root $(or $(DATA),../shared/data/esc10)
	$(BIN)/python bench/inference_throughput.py --root $(or $(DATA),../shared/data/esc10)
	$(BIN)/python bench/families.py

leaderboard: install ## Cross-validate every family on ESC-10 (DATA=path/to/esc10; hours on a CPU)
	$(BIN)/python bench/leaderboard.py --root $(or $(DATA),../shared/data/esc10) --readme README.md

clean: ## Remove caches and run outputs (keeps .venv and data/)
	rm -rf $(RUNS) wandb lightning_logs .pytest_cache .ruff_cache build dist *.egg-info
	find . -name __pycache__ -type d -prune -not -path './$(VENV)/*' -exec rm -rf {} +
