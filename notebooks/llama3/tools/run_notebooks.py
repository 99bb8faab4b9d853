"""Execute every notebook in order, each in a fresh kernel, and report the answer.

Writes build/executed/NN_*.ipynb, build/html/NN_*.html and build/run-summary.json, then
prints the prompt, its token count and the top 5 next tokens. Reads LLAMA3_DIR and
LLAMA3_PROMPT like the notebooks do. Bad input stops the run with one message and exit 2.

    python scripts/run/run_notebooks.py [notebooks ...]
"""

import argparse
import json
import os
import sys
import time
from pathlib import Path

import nbformat
from nbclient import NotebookClient
from nbclient.exceptions import CellExecutionError
from nbconvert import HTMLExporter

import llama3

REPO = llama3.REPO_DIR
NOTEBOOKS = REPO / "notebooks"
BUILD = REPO / "build"
KERNEL = "llama3-from-scratch"

# Run in the kernel of the notebook that ends the main sequence (09): it holds `ck`,
# `token_ids` and `logits` [tokens, vocab], so the answer is read, not computed again.
SUMMARY_CODE = """
import json as _json
print(_json.dumps({"token_ids": [int(t) for t in token_ids],
                   "top5": llama3.top_k_tokens(logits[-1], ck.tokenizer, 5)}))
"""
ANSWER_NOTEBOOK = "09_all_layers.ipynb"
# Bad input raised inside a kernel arrives as a class name: print its message, not a traceback.
INPUT_ERRORS = {cls.__name__ for cls in (llama3.Llama3InputError, *llama3.Llama3InputError.__subclasses__())}


def fail(message: str) -> None:
    print(f"\nerror: {message}", file=sys.stderr)
    sys.exit(2)


def execute(path: Path, capture_summary: bool) -> tuple[nbformat.NotebookNode, dict | None]:
    nb = nbformat.read(path, as_version=4)
    client = NotebookClient(nb, kernel_name=KERNEL, timeout=3600, resources={"metadata": {"path": str(NOTEBOOKS)}})
    summary = None
    with client.setup_kernel():
        for index, cell in enumerate(nb.cells):
            client.execute_cell(cell, index)
        if capture_summary:
            probe = nbformat.v4.new_code_cell(SUMMARY_CODE)
            nb.cells.append(probe)  # nbclient writes outputs back into nb.cells[index]
            try:
                client.execute_cell(probe, len(nb.cells) - 1, store_history=False)
            finally:
                nb.cells.pop()  # not part of the saved notebook
            text = "".join(o.get("text", "") for o in probe.outputs if o.get("name") == "stdout")
            summary = json.loads(text)
    return nb, summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("notebooks", nargs="*", type=Path)
    args = parser.parse_args()
    paths = args.notebooks or sorted(NOTEBOOKS.glob("[0-9][0-9]_*.ipynb"))

    if os.environ.get("LLAMA3_DIR"):  # the kernels run in notebooks/, so pass them an absolute path
        os.environ["LLAMA3_DIR"] = str(Path(os.environ["LLAMA3_DIR"]).expanduser().absolute())

    # Check the checkpoint and the prompt before starting any kernel.
    prompt = llama3.prompt_text()
    try:
        ck = llama3.load_checkpoint()
        llama3.encode_prompt(ck.tokenizer, prompt, ck.config)
    except llama3.Llama3InputError as e:
        fail(str(e))
    print(llama3.describe(ck))
    del ck

    (BUILD / "executed").mkdir(parents=True, exist_ok=True)
    (BUILD / "html").mkdir(parents=True, exist_ok=True)
    seconds, summary = {}, None
    for path in paths:
        started = time.perf_counter()
        print(f"running {path.name} ...", end="", flush=True)
        try:
            nb, found = execute(path, capture_summary=path.name == ANSWER_NOTEBOOK)
        except CellExecutionError as e:
            print()
            if e.ename in INPUT_ERRORS:
                fail(e.evalue)
            fail(f"{path.name} failed in a cell: {e.ename}: {e.evalue}")
        seconds[path.name] = round(time.perf_counter() - started, 2)
        print(f" {seconds[path.name]:.1f} s")
        summary = found or summary
        nbformat.write(nb, BUILD / "executed" / path.name)
        html, _ = HTMLExporter().from_notebook_node(nb)
        (BUILD / "html" / path.with_suffix(".html").name).write_text(html)

    report = {"model_dir": str(llama3.checkpoint_dir()), "prompt": prompt, "seconds": seconds}
    if summary:
        top5 = [{"id": i, "text": t, "probability": p} for i, t, p in summary["top5"]]
        report |= {"token_ids": summary["token_ids"], "top5": top5}
    (BUILD / "run-summary.json").write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n")

    print(f"\nprompt: {prompt!r}")
    if summary:
        print(f"tokens: {len(summary['token_ids'])}")
        print("top 5 next tokens:")
        for rank, (token_id, text, prob) in enumerate(summary["top5"], 1):
            print(f"  {rank}. {token_id:>6}  {text!r:<16} {prob:.4f}")
    print(
        f"\nexecuted notebooks: {BUILD / 'executed'}   html: {BUILD / 'html'}   summary: {BUILD / 'run-summary.json'}"
    )


if __name__ == "__main__":
    main()
