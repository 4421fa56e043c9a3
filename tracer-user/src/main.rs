//! The `vmalock` command line (bpftrace / libbpf-tools conventions: -p, -c, -d, -o).

use std::{io::Write as _, path::PathBuf, process::ExitCode, time::Duration};

use anyhow::{Context as _, Result};
use clap::{Args, Parser, Subcommand};
use vmalock::{capability, child, export, live, replay};

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
    /// Trace live and print each violation as it happens, then a summary (the default when
    /// standard output is not a terminal: piped, CI).
    Run(TraceArgs),
    /// The live dashboard (the default when standard output is a terminal): violations by rule
    /// and site, details, tasks and their locks, rates, rules; `?` lists the keys.
    Watch {
        #[command(flatten)]
        trace: TraceArgs,
        /// Show a recorded trace instead of tracing live.
        #[arg(long, value_name = "FILE", conflicts_with_all = ["pid", "command", "duration", "output"])]
        replay: Option<PathBuf>,
    },
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
    /// Convert a trace file for other tools: Chrome Trace Event JSON for ui.perfetto.dev and
    /// chrome://tracing, or the trace itself (JSON Lines); kernel pointers become per-trace
    /// pseudonyms unless --raw-pointers.
    Export {
        file: PathBuf,
        #[arg(long, short = 'f', value_enum, default_value = "chrome")]
        format: export::Format,
        /// Output file (created 0600, owned by the sudo user under sudo); standard output if absent.
        #[arg(short = 'o', long = "output")]
        output: Option<PathBuf>,
        /// Keep kernel addresses (they reveal the KASLR layout: only for traces you keep).
        #[arg(long)]
        raw_pointers: bool,
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
    /// Trace only tasks with this name (their comm, as /proc/PID/comm shows it; at most 15
    /// bytes), filtered in the kernel. With -p or -c, both must match.
    #[arg(long = "comm", value_name = "NAME")]
    comm: Option<String>,
    /// Stop after this many seconds.
    #[arg(short = 'd', long = "duration")]
    duration: Option<f64>,
    /// Write a trace file that `vmalock check` can replay.
    #[arg(short = 'o', long = "output")]
    output: Option<PathBuf>,
    /// With -o: the trace file's form. binary is about half the size and several times
    /// faster to check (for long recordings); `vmalock export -f jsonl` turns it into JSON Lines.
    #[arg(long = "trace-format", value_enum, default_value = "jsonl", requires = "output")]
    trace_format: vmalock::trace::TraceFormat,
    /// With -o: when the run ends, also export the trace in this format next to it
    /// (FILE with its extension replaced by .chrome.json), pointers scrubbed.
    #[arg(long = "export", value_enum, requires = "output")]
    export: Option<export::Format>,
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
        None if std::io::IsTerminal::is_terminal(&std::io::stdout()) => watch(cli.trace, None),
        None => trace(cli.trace, false),
        Some(Cmd::Run(a)) => trace(a, false),
        Some(Cmd::Watch { trace, replay }) => watch(trace, replay),
        Some(Cmd::Record(a)) => {
            if a.output.is_none() {
                anyhow::bail!("record needs -o FILE");
            }
            trace(a, true)
        }
        Some(Cmd::Check { file, explain, graph }) => check(&file, explain, graph.as_deref()),
        Some(Cmd::Export { file, format, output, raw_pointers }) => export_file(&file, format, output.as_deref(), raw_pointers),
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

fn watch(a: TraceArgs, replay: Option<PathBuf>) -> Result<ExitCode> {
    let source = match replay {
        Some(f) => vmalock::tui::Source::Replay(f),
        None => vmalock::tui::Source::Live(run_options(&a, false)?),
    };
    vmalock::tui::watch(source)?;
    if let Some((format, trace)) = a.export.zip(a.output) {
        also_export(&trace, format)?;
    }
    Ok(ExitCode::SUCCESS)
}

/// `--export FORMAT` with `-o FILE`: FILE exported next to it, pointers scrubbed.
fn also_export(trace: &std::path::Path, format: export::Format) -> Result<ExitCode> {
    let out = trace.with_extension(match format {
        export::Format::Chrome => "chrome.json",
        export::Format::Jsonl => "scrubbed.jsonl",
        export::Format::Perfetto => "perfetto-trace",
    });
    export_file(trace, format, Some(&out), false)
}

fn run_options(a: &TraceArgs, record: bool) -> Result<live::RunOptions> {
    if !(a.ring_kib >= 4 && a.ring_kib.is_power_of_two()) {
        anyhow::bail!("--ring-kib {} must be a power of two of at least 4 (the ring is whole pages)", a.ring_kib);
    }
    if let Some(g) = &a.graph {
        vmalock::graph::check_path(g)?;
    }
    Ok(live::RunOptions {
        pid: a.pid,
        comm: a.comm.as_deref().map(vmalock::loader::comm_bytes).transpose()?,
        command: a.command.as_deref().map(child::split_command),
        duration: a.duration.map(Duration::from_secs_f64),
        output: a.output.clone(),
        trace_format: a.trace_format,
        ring_bytes: a.ring_kib * 1024,
        all_events: a.all_events || record,
        force_tracepoint: a.tracepoints,
        snapshot_ms: a.snapshot_ms,
        graph: a.graph.clone(),
        argv: std::env::args().collect(),
        observer: None,
    })
}

fn trace(a: TraceArgs, record: bool) -> Result<ExitCode> {
    let export_after = a.export.zip(a.output.clone());
    let opts = run_options(&a, record)?;
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let summary = rt.block_on(live::run(opts))?;
    let _ = std::io::stdout().flush();
    eprintln!("{summary}");
    if let Some((format, trace)) = export_after {
        also_export(&trace, format)?;
    }
    Ok(ExitCode::SUCCESS)
}

fn export_file(file: &std::path::Path, format: export::Format, output: Option<&std::path::Path>, raw: bool) -> Result<ExitCode> {
    let f = std::fs::File::open(file).with_context(|| format!("cannot open {}", file.display()))?;
    let input = std::io::BufReader::with_capacity(1 << 16, f);
    let done = match output {
        Some(o) => {
            let out = std::io::BufWriter::new(vmalock::outfile::create_private(o)?);
            export::export(input, out, format, raw)
        }
        None => export::export(input, std::io::stdout().lock(), format, raw),
    }
    .with_context(|| format!("exporting {}", file.display()))?;
    for w in &done.warnings {
        eprintln!("vmalock: warning: {}: {w}", file.display());
    }
    eprintln!(
        "vmalock: exported {} events{} from {} to {}{}",
        done.events,
        if format != export::Format::Jsonl { format!(" and {} violation(s)", done.violations) } else { String::new() },
        file.display(),
        output.map_or("standard output".into(), |o| o.display().to_string()),
        match format {
            export::Format::Chrome => " (open it in ui.perfetto.dev or chrome://tracing)",
            export::Format::Perfetto => " (open it in ui.perfetto.dev or trace_processor)",
            export::Format::Jsonl => "",
        },
    );
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
