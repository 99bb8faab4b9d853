"""Train the demo checkpoint: Llama 3 in miniature (writes scripts/demo/trained/).

The program is `llama3.tools.train_demo` in the package (its docstring has the details); this file only starts it.
"""

from llama3.tools.train_demo import main

if __name__ == "__main__":
    main()
