//! vmalock: checks the Linux kernel's mm locking rules live with eBPF.
//!
//! Data flows one way: probes → ring buffer → [`event`] decode → [`model`] (pure: no aya, no
//! tokio, no I/O, so live runs and replays judge alike) → sinks ([`trace`] files, reports).
pub mod comm;
pub mod event;
pub mod nameset;
pub mod model;
pub mod trace;
pub mod btf;
pub mod layout;
pub mod hooks;
pub mod symbols;
pub mod loader;
pub mod tpformat;
pub mod capability;
pub mod child;
pub mod live;
pub mod pipeline;
pub mod report;
pub mod replay;
pub mod export;
pub mod outfile;
pub mod observe;
pub mod tui;
pub mod graph;
