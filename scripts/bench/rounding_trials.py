"""Measure how far rounding moves the logits on random checkpoints, against logits_tolerance.

The program is `llama3.tools.rounding_trials` in the package (its docstring has the details); this file only starts it.
"""

from llama3.tools.rounding_trials import main

if __name__ == "__main__":
    main()
