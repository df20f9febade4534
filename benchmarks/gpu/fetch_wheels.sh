#!/usr/bin/env bash
# What the GPU machine lacks, fetched here as wheels into git-ignored folders of the repository
# root that the device command carries (it has no network): `.whl/` (rlhfkit's pins of
# transformers, tokenizers, peft and datasets, datasets' dill and multiprocess, TRL 1.16) and
# `.whl-trl112/` (TRL 1.12, the last release with PPOTrainer: two versions of one package in
# one install stop it). Also copies the shared CPU benchmark's TRL script into `.peer/`, which
# trl_side.py runs there (the shared folder beside the checkout does not travel).
#
# The machine has Python 3.12 (x86-64) with torch, accelerate, huggingface_hub, pyarrow, pandas,
# xxhash, fsspec, pyyaml, tqdm and pytest; torch is never carried.
#
#     bash benchmarks/gpu/fetch_wheels.sh            # PEER=DIR: the shared benchmark's folder
set -euo pipefail
cd "$(dirname "$0")/../.."
PEER=${PEER:-../shared/peer}

download() {
    local dest=$1
    shift
    python3 -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 \
        --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
        --platform manylinux2014_x86_64 -d "$dest" "$@"
}

download .whl transformers==5.23.0 tokenizers==0.23.3 peft==0.21.2 datasets==5.2.0 \
    dill==0.4.1 multiprocess==0.70.19 trl==1.16.0
download .whl-trl112 trl==1.12.0
mkdir -p .peer
cp -f "$PEER/bench_trl.py" .peer/
mkdir -p .git/info && touch .git/info/exclude  # a clone may have none
for folder in /.whl/ /.whl-trl112/ /.peer/; do
    grep -qxF "$folder" .git/info/exclude || echo "$folder" >>.git/info/exclude
done

# one version of each package per folder, or the install stops
for folder in .whl .whl-trl112; do
    twice=$(ls "$folder" | cut -d- -f1 | sort | uniq -d)
    if [ -n "$twice" ]; then
        echo "$folder holds more than one version of: $twice; keep one" >&2
        exit 1
    fi
done
du -ch .whl .whl-trl112 .peer | tail -1
