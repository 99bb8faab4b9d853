"""Benchmark tensor parallelism on the 70B slice in 1, 2, 4 and 8 processes (make bench-tp).

The program is `llama3.tools.bench_tp` in the package (its docstring has the details); this file only starts it.
"""

from llama3.tools.bench_tp import main

if __name__ == "__main__":
    main()
