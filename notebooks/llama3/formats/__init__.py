"""The file formats, each module owning its reader and its writer: Meta's original files, single or in
model-parallel shards (meta.py), and Hugging Face's safetensors folders (huggingface.py)."""
