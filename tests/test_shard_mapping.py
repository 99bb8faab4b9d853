"""Rank r of a tensor-parallel run maps consolidated.0r.pth and no other shard (llama3.parallel, scripts/run/run_tp.py).

torchrun starts 4 processes on the demo cut into 4 shards; with $LLAMA3_TP_DUMP_MAPS each rank writes its
/proc/self/maps after the forward pass and the generation, and the test reads which shard files each one maps.
A rank that loaded the whole checkpoint (llama3.load_checkpoint maps every shard) or another rank's file fails it.
"""

import os
import re
import subprocess
import sys
from pathlib import Path

import llama3

REPO = Path(__file__).resolve().parent.parent
N_RANKS = 4  # the demo's 4 query heads: the most ranks it can be cut for


def mapped_shards(maps_file: Path, ckpt_dir: Path) -> set[str]:
    """Names of the checkpoint's shard files the process has mapped (the path is the last field of a line)."""
    names = set()
    for line in maps_file.read_text().splitlines():
        fields = line.split(maxsplit=5)
        if (
            len(fields) == 6
            and Path(fields[5]).parent == ckpt_dir
            and re.fullmatch(r"consolidated\.\d\d\.pth", Path(fields[5]).name)
        ):
            names.add(Path(fields[5]).name)
    return names


def test_each_rank_maps_only_its_own_shard(demo, demo_shards, tmp_path):
    ckpt_dir = demo_shards / f"demo-{N_RANKS}"
    maps_dir = tmp_path / "maps"
    env = {k: v for k, v in os.environ.items() if not k.startswith("LLAMA3_")}
    env |= {
        "LLAMA3_DIR": str(ckpt_dir),
        "LLAMA3_TP_DUMP_MAPS": str(maps_dir),
        "LLAMA3_MAX_NEW_TOKENS": "2",
        "OMP_NUM_THREADS": "1",
    }
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(N_RANKS),
           str(REPO / "scripts" / "run" / "run_tp.py"), "--summary", str(tmp_path / "summary.json")]  # fmt: skip
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=180, cwd=REPO)
    assert done.returncode == 0, done.stderr[-3000:]
    for rank in range(N_RANKS):
        assert mapped_shards(maps_dir / f"rank-{rank}.maps", ckpt_dir) == {f"consolidated.{rank:02d}.pth"}, (
            f"rank {rank}"
        )


def test_the_dump_is_off_by_default(tmp_path, monkeypatch):
    """Without the variable a rank writes nothing; with it, its maps."""
    monkeypatch.delenv(llama3.DUMP_MAPS_ENV, raising=False)
    monkeypatch.chdir(tmp_path)
    llama3.dump_maps(0)
    assert list(tmp_path.iterdir()) == []
    monkeypatch.setenv(llama3.DUMP_MAPS_ENV, str(tmp_path / "maps"))
    llama3.dump_maps(3)
    assert "[stack]" in (tmp_path / "maps" / "rank-3.maps").read_text()
