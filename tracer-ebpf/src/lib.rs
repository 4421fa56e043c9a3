#![no_std]
// Exists so tracer-user can name this crate as a build-dependency (see its Cargo.toml).
