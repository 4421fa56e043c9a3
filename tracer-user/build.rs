//! Builds the eBPF object (tracer-ebpf, for bpfel-unknown-none with the nightly toolchain and
//! bpf-linker) and leaves it in OUT_DIR for `include_bytes_aligned!`, so `cargo build` of this
//! crate is all a developer runs. `cargo xtask setup` installs what this needs.
use anyhow::{Context as _, anyhow};
use aya_build::Toolchain;

fn main() -> anyhow::Result<()> {
    let cargo_metadata::Metadata { packages, .. } = cargo_metadata::MetadataCommand::new()
        .no_deps()
        .exec()
        .context("cargo metadata")?;
    let ebpf = packages
        .into_iter()
        .find(|p| p.name.as_str() == "tracer-ebpf")
        .ok_or_else(|| anyhow!("tracer-ebpf package not found in the workspace"))?;
    let root = ebpf
        .manifest_path
        .parent()
        .ok_or_else(|| anyhow!("no parent for {}", ebpf.manifest_path))?;
    if which::which("bpf-linker").is_err() {
        return Err(anyhow!(
            "bpf-linker is not on PATH: the eBPF programs cannot be linked. \
             Run `cargo xtask setup` (it builds bpf-linker against the nightly's own LLVM)."
        ));
    }
    aya_build::build_ebpf(
        [aya_build::Package { name: ebpf.name.as_str(), root_dir: root.as_str(), ..Default::default() }],
        Toolchain::default(),
    )
}
