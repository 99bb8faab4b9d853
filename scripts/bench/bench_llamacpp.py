"""This project's prefill and decode beside llama.cpp's on the same weights and tokens (make bench-llamacpp).

The program is `llama3.tools.bench_llamacpp` in the package (its docstring has the details); this file only starts it.
"""

from llama3.tools.bench_llamacpp import main

if __name__ == "__main__":
    main()
