"""Build the demo checkpoint in Meta's layout from the committed trained parameters (make demo).

The program is `llama3.tools.demo_checkpoint` in the package (its docstring has the details); this file only starts it.
"""

from llama3.tools.demo_checkpoint import main

if __name__ == "__main__":
    main()
