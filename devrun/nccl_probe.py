"""A world-size-1 NCCL job with NVTX ranges: does the export record NCCL's NVTX payloads (ranks, message sizes)?"""
import os

import torch
import torch.distributed as dist

os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
os.environ.setdefault("MASTER_PORT", "29517")
dist.init_process_group("nccl", rank=0, world_size=1, device_id=torch.device("cuda:0"))
x = torch.ones(1 << 20, device="cuda")  # 4 MiB of fp32
for i in range(6):
    torch.cuda.nvtx.range_push(f"step_{i}")
    dist.all_reduce(x)
    dist.broadcast(x, 0)
    torch.cuda.nvtx.range_pop()
torch.cuda.synchronize()
dist.destroy_process_group()
print("nccl probe done", torch.__version__, torch.cuda.nccl.version())
