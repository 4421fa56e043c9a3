//! `cargo xtask`: the project's own set-up, build, run and test commands.
//!
//! `cargo xtask run` and `cargo xtask test` are the README's two commands: each installs what is
//! missing first (idempotently: a second run skips what is there), so a fresh machine needs
//! nothing else.

mod bench;
mod cmd;
mod rules_table;
mod setup;
mod test;
mod vm;

use anyhow::Result;
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "cargo xtask")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Install what building the eBPF half needs: nightly rust-src, bpf-linker on the nightly's LLVM.
    Setup,
    /// Set up, build in release mode, and run vmalock live (as root) with these arguments.
    Run {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Set up, then run every test: unit, model, trace, the live eBPF tests on this kernel, and
    /// the in-guest suite on the test kernels (vm-images/kernels.toml) under QEMU.
    Test {
        /// Only the host suite (no test kernels).
        #[arg(long)]
        host_only: bool,
        /// Only these test kernels (default: all in the manifest).
        #[arg(long = "kernel")]
        kernels: Vec<String>,
        /// Extra arguments for `cargo test` (e.g. a test name filter).
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Benchmark what tracing costs (not a test): mm microbenchmarks untraced, under vmalock and
    /// under bpftrace, alternating; model replay rate; daemon RSS. Writes target/bench/.
    Bench {
        /// Only these microbenchmarks (default: all).
        #[arg(long = "bench")]
        benches: Vec<String>,
        /// Only these traced configurations (default, all-events, record, bpftrace, bpftrace-stream, hooks-only).
        #[arg(long = "config")]
        configs: Vec<String>,
        #[arg(long, default_value_t = 5)]
        repeats: usize,
        /// Seconds per microbenchmark run.
        #[arg(long, default_value_t = 2.0)]
        seconds: f64,
        /// Skip the BPF run-time profile (bpf_stats) pass.
        #[arg(long)]
        no_profile: bool,
        /// Seconds of the live daemon RSS run (the full run: --rss-seconds 600; 0 skips it).
        #[arg(long, default_value_t = 60)]
        rss_seconds: u64,
        /// Seconds of mmap/munmap recorded for the replay trace (0 skips the replay).
        #[arg(long, default_value_t = 5.0)]
        replay_seconds: f64,
        /// Also write the markdown report here (e.g. bench/RESULTS.md).
        #[arg(long)]
        results: Option<std::path::PathBuf>,
        /// Run the ratios in this test kernel's guest (e.g. debian-7.2) instead of on the host.
        #[arg(long)]
        guest: Option<String>,
        /// Seconds of each dashboard-under-load run (`watch --all-events` over mmap and mprotect, keys timed; 0 skips it).
        #[arg(long, default_value_t = 10.0)]
        dashboard_seconds: f64,
    },
    /// Test kernels under QEMU.
    Vm {
        #[command(subcommand)]
        cmd: VmCmd,
    },
}

#[derive(Subcommand)]
enum VmCmd {
    /// Boot each test kernel, run the in-guest suite, print kernel × test.
    Test {
        #[arg(long = "kernel")]
        kernels: Vec<String>,
        /// Seconds one boot may take before it is killed and counted as a hang.
        #[arg(long, default_value_t = vm::SUITE_TIMEOUT_SECS)]
        timeout: u64,
        /// Build the kernels with a recipe that are not built yet (as `cargo xtask test`
        /// does), instead of skipping them.
        #[arg(long)]
        build: bool,
    },
    /// Boot one test kernel and run a shell command in it instead of the suite (as root, with
    /// vmalock, vmalock-workload, vmalock-trigger on PATH and the test module loaded).
    Run {
        #[arg(long = "kernel")]
        kernel: String,
        #[arg(long, default_value_t = 900)]
        timeout: u64,
        /// A host executable to copy in with its shared libraries (a name on PATH or a path),
        /// e.g. `--with bpftrace` to compare a peer tracer in the guest. Repeatable.
        #[arg(long = "with")]
        with: Vec<String>,
        #[arg(trailing_var_arg = true, allow_hyphen_values = true, required = true)]
        command: Vec<String>,
    },
    /// Build a test kernel from a recipe in vm-images/recipes (e.g. debug-6.12), cached.
    Build { name: String },
    /// List the test kernels in vm-images/kernels.toml.
    List,
}

/// `--with NAME`: a path as given, or the name looked up on PATH.
fn host_executable(name: &str) -> Result<std::path::PathBuf> {
    let p = std::path::PathBuf::from(name);
    if name.contains('/') {
        return if p.is_file() { Ok(p) } else { Err(anyhow::anyhow!("--with {name}: no such file")) };
    }
    bench::peer::which(name).ok_or_else(|| anyhow::anyhow!("--with {name}: not found on PATH; install it on the host or give its path"))
}

fn main() {
    let cli = Cli::parse();
    let result: Result<()> = match cli.cmd {
        Cmd::Setup => setup::ensure_all(),
        Cmd::Run { args } => setup::ensure_all().and_then(|()| run(&args)),
        Cmd::Test { host_only, kernels, args } => {
            setup::ensure_all().and_then(|()| test::run(&args, (!host_only).then_some(kernels.as_slice())))
        }
        Cmd::Bench { benches, configs, repeats, seconds, no_profile, rss_seconds, replay_seconds, results, guest, dashboard_seconds } => {
            let argv = std::iter::once("cargo xtask".to_string()).chain(std::env::args().skip(1)).collect::<Vec<_>>().join(" ");
            let o = bench::Options {
                benches: if benches.is_empty() { bench::BENCHES.iter().map(|b| b.to_string()).collect() } else { benches },
                configs: if configs.is_empty() { ["default", "all-events", "record", "bpftrace", "bpftrace-stream", "hooks-only"].map(String::from).to_vec() } else { configs },
                repeats,
                seconds,
                no_profile,
                rss_seconds,
                replay_seconds,
                results,
                guest,
                dashboard_seconds,
            };
            setup::ensure_all().and_then(|()| bench::run(&o, &argv))
        }
        Cmd::Vm { cmd: VmCmd::Test { kernels, timeout, build } } => setup::ensure_all().and_then(|()| {
            let runs = vm::test(&kernels, std::time::Duration::from_secs(timeout), build)?;
            let (p, f, s) = vm::tally(&runs);
            println!("vm tests: {p} passed, {f} failed, {s} skipped");
            if f > 0 { anyhow::bail!("vm tests failed") } else { Ok(()) }
        }),
        Cmd::Vm { cmd: VmCmd::Run { kernel, timeout, with, command } } => setup::ensure_all()
            .and_then(|()| with.iter().map(|w| host_executable(w)).collect::<Result<Vec<_>>>())
            .and_then(|with| vm::run_command(&kernel, &command.join(" "), std::time::Duration::from_secs(timeout), &with)),
        Cmd::Vm { cmd: VmCmd::Build { name } } => vm::build_kernel(&name),
        Cmd::Vm { cmd: VmCmd::List } => vm::list(),
    };
    if let Err(e) = result {
        eprintln!("xtask: error: {e:#}");
        std::process::exit(1);
    }
}

fn run(args: &[String]) -> Result<()> {
    cmd::run(cmd::cargo().args(["build", "--release", "-p", "tracer-user", "--bin", "vmalock"]))?;
    let bin = cmd::workspace_root().join("target/release/vmalock");
    let mut c = if cmd::is_root() {
        std::process::Command::new(&bin)
    } else {
        eprintln!("xtask: vmalock loads eBPF programs; running it with sudo");
        let mut c = std::process::Command::new("sudo");
        c.arg(&bin);
        c
    };
    let status = c.args(args).status()?;
    std::process::exit(status.code().unwrap_or(1));
}
