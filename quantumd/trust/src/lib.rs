//! QuantumOS trust: node identity (ML-DSA-65 + Ed25519, TPM-sealed), cell identity documents, signed cell bundles
