"""GPU path check: a small pipeline on CUDA in bf16 autocast, then a reload in transformers."""

import torch
import transformers

from rlhfkit.pipeline import Pipeline
from rlhfkit.pipeline_config import PipelineConfig
from rlhfkit.runtime.config import load_config

transformers.utils.logging.set_verbosity_error()
print(torch.__version__, transformers.__version__, torch.cuda.get_device_name(0))
over = [
    "name=gpu",
    "runs_dir=/tmp/runs",
    "device=cuda",
    "sft.precision=bf16",
    "rm.precision=bf16",
    "sft.max_steps=600",
    "rm.max_steps=200",
    "collect.train_prompts=1200",
    "sft.progress=false",
    "rm.progress=false",
]
cfg = load_config(PipelineConfig, None, over)
s = Pipeline(cfg).run_all()
m = transformers.AutoModelForCausalLM.from_pretrained("/tmp/runs/gpu/sft/final")
r = transformers.AutoModelForSequenceClassification.from_pretrained("/tmp/runs/gpu/rm/final")
print("reload ok", type(m).__name__, type(r).__name__, r.config.num_labels)
