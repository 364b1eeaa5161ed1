-- CUDA kernels with their names resolved (demangled, short and mangled where the export has it).
SELECT
    k.start AS start_ns, k."end" AS end_ns, k."end" - k.start AS duration_ns,
    k.globalPid AS global_pid, k.deviceId AS device_id, k.contextId AS context_id, k.streamId AS stream_id,
    k.correlationId AS correlation_id,
    demangled.value AS name, short.value AS short_name, coalesce(mangled.value, demangled.value) AS mangled_name,
    k.gridX AS grid_x, k.gridY AS grid_y, k.gridZ AS grid_z, k.blockX AS block_x, k.blockY AS block_y,
    k.blockZ AS block_z, k.registersPerThread AS registers_per_thread, k.graphNodeId AS graph_node_id
FROM raw.CUPTI_ACTIVITY_KIND_KERNEL AS k
LEFT JOIN raw.StringIds AS demangled ON demangled.id = k.demangledName
LEFT JOIN raw.StringIds AS short ON short.id = k.shortName
LEFT JOIN raw.StringIds AS mangled ON mangled.id = k.mangledName
