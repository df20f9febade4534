"""What every run needs around its training loop.

- `config`: frozen dataclass configs from YAML and `key=value` overrides (`config_types` checks
  values)
- `rundir`: the run directory layout and its exists / resume / overwrite rules
- `checkpoint`: atomic checkpoints, the latest complete one, RNG state for exact resume
- `metrics`: JSONL metrics and TensorBoard scalars
- `progress`: the training progress bar
- `seeding`: seeds, and the seed of each random stream

Import from the modules (`from rlhfkit.runtime.config import load_config`): nothing is re-exported
here, so reading a config does not import torch.
"""
