"""Benchmark the walkthrough's path at full size against the usual approach and the machine's floors (make bench).

The program is `llama3.tools.bench` in the package (its docstring has the details); this file only starts it.
"""

from llama3.tools.bench import main

if __name__ == "__main__":
    main()
