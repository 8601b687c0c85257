"""Run by test_rtd_ddp under torchrun: two ranks tune the tiny backbone; rank 0 saves; weights must agree."""

import sys
from pathlib import Path

import torch
import torch.distributed as tdist

sys.path.insert(0, str(Path(__file__).parent))
from conftest import TinyBackbone, TinyMapper
from zscir.train.rtd import RTDConfig, train_rtd
from zscir.train.triplets import generate_triplets

out = sys.argv[1]
tdist.init_process_group("gloo")  # ours: train_rtd leaves a process group it did not make in place
caps = ["a small red circle on a white background", "a big blue star at the top left", "a green square",
        "a tiny purple hexagon on the right", "a large orange diamond", "a pink cross in the centre"]
torch.manual_seed(1)
mapper = TinyMapper()
res = train_rtd(RTDConfig(out=out, steps=3, batch_size=8, lr=1e-3, device="cpu"), TinyBackbone(0), mapper,
                generate_triplets(caps, 2), progress=False)
w = res.student.text_tower.state_dict()["encoder.encoder.layer.0.attention.self.query.weight"].clone()
ws = [torch.zeros_like(w) for _ in range(tdist.get_world_size())]
tdist.all_gather(ws, w)
assert all(torch.equal(ws[0], x) for x in ws), "ranks diverged"
assert (res.path is None) == (tdist.get_rank() != 0), "only rank 0 writes"
print(f"rank {tdist.get_rank()} ok losses={res.losses}")
tdist.destroy_process_group()
