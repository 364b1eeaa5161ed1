#!/bin/bash
# One device call: NCCL payload probe, ddp_study and partition_study on 1 GPU through nsysan run (exports only).
set -x
python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1
export LD_LIBRARY_PATH=$PWD/device-libs:$LD_LIBRARY_PATH
export NSYS=/opt/nvidia/nsight-compute/2025.3.1/host/target-linux-x64/nsys
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
nvidia-smi -L; python3 -c "import torch;print(torch.__version__, torch.cuda.device_count(), torch.cuda.nccl.version())"
which numactl; numactl --hardware 2>&1 | head -3
$NSYS export --help > $OUT/nsys_export_help.txt 2>&1
$NSYS profile --help > $OUT/nsys_profile_help.txt 2>&1
for variant in plain json; do
  $NSYS profile -t cuda,nvtx -s none --cpuctxsw=none -o /tmp/nccl_$variant --force-overwrite true python3 devrun/nccl_probe.py
done
$NSYS export --type sqlite -o /tmp/nccl_plain.sqlite --force-overwrite true /tmp/nccl_plain.nsys-rep
$NSYS export --type sqlite --include-json true -o /tmp/nccl_json.sqlite --force-overwrite true /tmp/nccl_json.nsys-rep
for v in plain json; do echo "=== $v"; python3 devrun/dump_payload.py /tmp/nccl_$v.sqlite; done > $OUT/payload.txt 2>&1
cp /tmp/nccl_json.sqlite $OUT/nccl_json.sqlite
timeout 250 python3 -m nsysan run experiment=ddp_study hardware.gpu_ids=[0] ddp.steps=8 ddp.warmup_steps=3 \
  'grid.workers=[0,2]' 'grid.precision=[fp32,fp16,bf16]' 'grid.numa_binding=[false]' nsys.path=$NSYS \
  output_dir=/tmp/out 2>&1 | tail -25
timeout 150 python3 -m nsysan run experiment=partition_study hardware.gpu_ids=[0] partition.batches=8 \
  partition.warmup_batches=3 'grid.hidden=[1024]' nsys.path=$NSYS output_dir=/tmp/out 2>&1 | tail -15
for s in /tmp/out/*/*/*; do python3 -m nsysan export $s/nsys_reports --nsys $NSYS 2>&1 | tail -2; done
cd /tmp/out && tar czf $OUT/studies.tgz --exclude='*.nsys-rep' --exclude='*.qdstrm' . && ls -la $OUT
