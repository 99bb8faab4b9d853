"""Run the model tensor-parallel, one process per shard, over torch.distributed (make run-tp).

The program is `llama3.tools.run_tp` in the package (its docstring has the details); this file only starts it.
"""

from llama3.tools.run_tp import main

if __name__ == "__main__":
    main()
