//! QuantumOS cell provider: serves a catalog of signed cell bundles over HTTP
