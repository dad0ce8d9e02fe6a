"""One module per workload; each defines `WORKLOAD` (see `benchmarks.common.workload`).

`python -m benchmarks.run NAME` runs `benchmarks/workloads/NAME.py`: a new workload is a new
module here, nothing else to register. Inputs come from `benchmarks.common.data`.
"""
