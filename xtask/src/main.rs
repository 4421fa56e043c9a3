//! `cargo xtask`: the project's own set-up, build, run and test commands.
//!
//! `cargo xtask run` and `cargo xtask test` are the README's two commands: each installs what is
//! missing first (idempotently: a second run skips what is there), so a fresh machine needs
//! nothing else.

mod cmd;
mod setup;
mod test;

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
    /// Set up, then run every test: unit, model, trace, and the live eBPF tests on this kernel.
    Test {
        /// Extra arguments for `cargo test` (e.g. a test name filter).
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
}

fn main() {
    let cli = Cli::parse();
    let result: Result<()> = match cli.cmd {
        Cmd::Setup => setup::ensure_all(),
        Cmd::Run { args } => setup::ensure_all().and_then(|()| run(&args)),
        Cmd::Test { args } => setup::ensure_all().and_then(|()| test::run(&args)),
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
