"""Install check: the embedded model loads and generates a token on this CPU.

Runs the generation in a child process so that a crash in llama.cpp (for example
an instruction the CPU or hypervisor does not allow) is reported, not fatal.
"""

from __future__ import annotations

import subprocess
import sys

CHILD = """
import importlib.resources, llama_cpp
from stepplan.engines._llama import MODEL_FILE, MODEL_PACKAGE, WARM_UP_PROMPT
path = importlib.resources.files(MODEL_PACKAGE).joinpath(MODEL_FILE)
llm = llama_cpp.Llama(model_path=str(path), n_ctx=256, n_threads=1, verbose=False)
next(llm.generate(llm.tokenize(WARM_UP_PROMPT, add_bos=False), temp=0.0))
"""


def main() -> int:
    try:
        res = subprocess.run([sys.executable, "-c", CHILD], capture_output=True, text=True, timeout=120)
    except subprocess.TimeoutExpired:
        print("embedded model check: no token after 120 s", file=sys.stderr)
        return 1
    if res.returncode != 0:
        how = f"killed by signal {-res.returncode}" if res.returncode < 0 else f"exit status {res.returncode}"
        tail = "\n".join(res.stderr.strip().splitlines()[-5:])
        print(f"embedded model check failed ({how}) {tail}".rstrip(), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
