"""The experiment runner behind ``nsysan run``: ViT pipeline studies under numactl and nsys, one report per run,
and distributed studies (DDP training, layer-wise vs tensor-parallel partitioning) under torchrun and nsys.

* :mod:`~nsysan.runner.config`: Hydra configs shipped in ``nsysan/runner/conf`` (experiment, hardware, test
  groups), composed with Hydra's compose API; ``-m`` sweeps expanded as Hydra's basic sweeper does;
* :mod:`~nsysan.runner.plan`: runs, report names ``pipeline_gpu{G}_numa{N}_vit{P}x{D}x{H}[_{variant}]``, skips,
  commands;
* :mod:`~nsysan.runner.dist`: the same for ``workload.kind`` ddp and partition (torchrun, NUMA binding per rank);
* :mod:`~nsysan.runner.study`: the study folder, results.json, experiment_summary.json, resume;
* :mod:`~nsysan.runner.analyze`: ``analyze=true`` (export, latency by model);
* :mod:`~nsysan.runner.command`: the ``nsysan run`` command.

The machine (NUMA nodes, GPUs, numactl) and each run's process handling come from :mod:`nsysan.host`. Nothing
here imports polars or duckdb, so studies run through ``nsysan run`` where only typer, rich, hydra-core and the
workload's own packages are installed. docs/workloads.md is the user's guide.
"""
