-- The GPUs the capture saw.
SELECT id AS device_id, name, busLocation AS bus_location, uuid, chipName AS chip_name,
       totalMemory AS memory_bytes, memoryBandwidth AS memory_bandwidth_bytes_per_s, smCount AS sm_count,
       clockRate AS clock_hz, computeMajor AS compute_major, computeMinor AS compute_minor, cuDevice AS cuda_device
FROM raw.TARGET_INFO_GPU
