//! QuantumOS quantum trail: an append-only, hash-chained, batch-signed record of everything quantumd assembled
