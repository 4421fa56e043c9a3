//! The `vmalock` command line (bpftrace / libbpf-tools conventions: -p, -c, -d, -o).

use std::{io::Write as _, path::PathBuf, process::ExitCode, time::Duration};

use anyhow::{Context as _, Result};
use clap::{Args, Parser, Subcommand};
use vmalock::{capability, child, live, replay};

#[derive(Parser)]
#[command(name = "vmalock", version, about = "Checks the Linux kernel's mm locking rules live, with eBPF")]
struct Cli {
    #[command(subcommand)]
    cmd: Option<Cmd>,
    #[command(flatten)]
    trace: TraceArgs,
}

#[derive(Subcommand)]
enum Cmd {
    /// Trace live and print each violation as it happens (the default).
    Run(TraceArgs),
    /// Trace live and write every event to a trace file (-o is required).
    Record(TraceArgs),
    /// Replay a trace file through the rules; exits 1 when it has violations, 2 when it is unreadable.
    Check {
        file: PathBuf,
        /// Also print each verdict's explanation.
        #[arg(long)]
        explain: bool,
        /// Write the lock-order graph: FILE.json (JSON) or FILE.dot (Graphviz).
        #[arg(long = "graph", value_name = "FILE")]
        graph: Option<PathBuf>,
    },
    /// Show which hook families, kernel layouts and rules this kernel supports.
    Probe {
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Args, Clone, Default)]
struct TraceArgs {
    /// Trace only this process (all its threads); stop when it exits.
    #[arg(short = 'p', long = "pid")]
    pid: Option<u32>,
    /// Run this command (split on whitespace) once the probes are attached; trace only it and
    /// stop when it exits.
    #[arg(short = 'c', long = "command", conflicts_with = "pid")]
    command: Option<String>,
    /// Stop after this many seconds.
    #[arg(short = 'd', long = "duration")]
    duration: Option<f64>,
    /// Write a trace file (JSON Lines) that `vmalock check` can replay.
    #[arg(short = 'o', long = "output")]
    output: Option<PathBuf>,
    /// Ring-buffer size in KiB (a power of two, at least 4).
    #[arg(long = "ring-kib", default_value_t = 4096)]
    ring_kib: u32,
    /// Send every event kind to userspace, not only those the rules need.
    #[arg(long)]
    all_events: bool,
    /// Attach plain tracepoints even where tp_btf works (normally only a fallback).
    #[arg(long)]
    tracepoints: bool,
    /// Take a VMA snapshot (iter/task_vma) every this many milliseconds; 0 turns snapshots off.
    /// Snapshots find VMA fields changed without the VMA write lock, VMAs left write-locked
    /// and VMAs inserted unlocked, on any kernel with BPF iterators.
    #[arg(long = "snapshot-ms", default_value_t = 1000)]
    snapshot_ms: u64,
    /// At the end, write the lock-order graph: FILE.json (JSON) or FILE.dot (Graphviz).
    #[arg(long = "graph", value_name = "FILE")]
    graph: Option<PathBuf>,
}

fn main() -> ExitCode {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("warn")).init();
    let cli = Cli::parse();
    match dispatch(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("vmalock: {e:#}");
            ExitCode::from(2)
        }
    }
}

fn dispatch(cli: Cli) -> Result<ExitCode> {
    match cli.cmd {
        None => trace(cli.trace, false),
        Some(Cmd::Run(a)) => trace(a, false),
        Some(Cmd::Record(a)) => {
            if a.output.is_none() {
                anyhow::bail!("record needs -o FILE");
            }
            trace(a, true)
        }
        Some(Cmd::Check { file, explain, graph }) => check(&file, explain, graph.as_deref()),
        Some(Cmd::Probe { json }) => {
            let caps = capability::probe()?;
            if json {
                println!("{}", serde_json::to_string_pretty(&caps)?);
            } else {
                print!("{}", capability::render(&caps));
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn trace(a: TraceArgs, record: bool) -> Result<ExitCode> {
    if !(a.ring_kib >= 4 && a.ring_kib.is_power_of_two()) {
        anyhow::bail!("--ring-kib {} must be a power of two of at least 4 (the ring is whole pages)", a.ring_kib);
    }
    if let Some(g) = &a.graph {
        vmalock::graph::check_path(g)?;
    }
    let opts = live::RunOptions {
        pid: a.pid,
        command: a.command.as_deref().map(child::split_command),
        duration: a.duration.map(Duration::from_secs_f64),
        output: a.output,
        ring_bytes: a.ring_kib * 1024,
        all_events: a.all_events || record,
        force_tracepoint: a.tracepoints,
        snapshot_ms: a.snapshot_ms,
        graph: a.graph,
        argv: std::env::args().collect(),
    };
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let summary = rt.block_on(live::run(opts))?;
    let _ = std::io::stdout().flush();
    eprintln!("{summary}");
    Ok(ExitCode::SUCCESS)
}

fn check(file: &PathBuf, explain: bool, graph: Option<&std::path::Path>) -> Result<ExitCode> {
    if let Some(g) = graph {
        vmalock::graph::check_path(g)?;
    }
    let f = std::fs::File::open(file).with_context(|| format!("cannot open {}", file.display()))?;
    let mut stdout = std::io::stdout().lock();
    let r = replay::replay(std::io::BufReader::with_capacity(1 << 16, f), |v| {
        // The explanation starts with the verdict line itself.
        if explain {
            let _ = writeln!(stdout, "{}", v.explain());
        } else {
            let _ = write!(stdout, "{}", v.report());
        }
    })
    .map_err(|e| anyhow::anyhow!("{}: {e}", file.display()))?;
    drop(stdout);
    if let Some(g) = graph {
        vmalock::graph::write(g, &r.graph)?;
        eprintln!("vmalock: lock-order graph ({} edges, {} cycles) written to {}", r.graph.edges.len(), r.graph.cycles.len(), g.display());
    }
    for w in &r.warnings {
        eprintln!("vmalock: warning: {}: {w}", file.display());
    }
    let lost = match &r.footer {
        Some(f) if f.lost_events > 0 => {
            format!("; {} events were lost while recording (state was reset at each loss)", f.lost_events)
        }
        _ => String::new(),
    };
    eprintln!(
        "vmalock: checked {} events from {} (kernel {}): {} violation(s){lost}",
        r.events,
        file.display(),
        r.header.kernel_release,
        r.verdicts,
    );
    Ok(if r.verdicts > 0 { ExitCode::from(1) } else { ExitCode::SUCCESS })
}
