//! A live run: attach, stream events through the model, print verdicts, optionally record, and
//! detach cleanly on Ctrl-C, SIGTERM, `-d` expiry or the end of the traced process.

use std::{
    fs::File,
    io::{BufWriter, Write as _},
    path::PathBuf,
    time::Duration,
};

use anyhow::{Context as _, Result};
use tokio::{io::unix::AsyncFd, signal::unix::{SignalKind, signal}, sync::oneshot};
use tracer_common::{TGID_ALL, kind, kind_bit};

use crate::{
    btf::KernelBtf,
    capability,
    child::{self, HeldChild},
    event::kind_name,
    loader::{self, Options, Tracer},
    model::RULES,
    observe::{Observer, PrintVerdicts, Started, TICK, Tick},
    pipeline::Pipeline,
    report::Summary,
    trace::{Filter, Footer, Header, TraceFormat, TraceWriter},
};

pub struct RunOptions {
    /// `-p PID`: trace this process only, until it exits.
    pub pid: Option<u32>,
    /// `--comm NAME` (NUL-padded, see `loader::comm_bytes`): only tasks of that name.
    pub comm: Option<[u8; 16]>,
    /// `-c CMD`: run this command, trace it only, stop when it exits.
    pub command: Option<Vec<String>>,
    /// `-d SECS`.
    pub duration: Option<Duration>,
    /// `-o FILE`: write a trace file.
    pub output: Option<PathBuf>,
    /// The form of that file.
    pub trace_format: TraceFormat,
    pub ring_bytes: u32,
    /// Send every event kind, not only what the rules need (`record`).
    pub all_events: bool,
    /// Attach plain tracepoints even where tp_btf works.
    pub force_tracepoint: bool,
    /// VMA snapshot period (iter/task_vma); 0 = off.
    pub snapshot_ms: u64,
    /// `--graph FILE`: write the lock-order graph at the end (.json or .dot).
    pub graph: Option<PathBuf>,
    /// The vmalock command line, for the trace header.
    pub argv: Vec<String>,
    /// Where verdicts and state go: `PrintVerdicts` (the text report) unless given.
    pub observer: Option<Box<dyn Observer>>,
}

/// Kinds the default rules need: mmap-lock-balance judges acquires, releases and exits; the
/// VMA rules their own kinds. `start_locking` only matters to a full recording, except one
/// taken under a per-VMA read lock, which the eBPF side always sends.
pub fn default_send_mask() -> u32 {
    [
        kind::MMAP_ACQUIRED,
        kind::MMAP_RELEASED,
        kind::TASK_EXIT,
        kind::VMA_WRITE_LOCK,
        kind::PAGEWALK,
        kind::PAGEWALK_VMA,
        kind::VMA_PREPARE,
        kind::VMA_NEW,
        kind::VMA_SNAPSHOT,
        kind::VMA_MODIFIED,
        kind::LOCK_ACQUIRE,
        kind::LOCK_RELEASE,
    ]
    .into_iter()
    .map(kind_bit)
    .fold(0, |a, b| a | b)
}

pub fn all_send_mask() -> u32 {
    (1..kind::COUNT as u16).map(kind_bit).fold(0, |a, b| a | b)
}

/// What ended the run.
enum Stop {
    Signal(&'static str),
    Duration,
    ChildExited(String),
    PidExited,
    /// The dashboard's `q`.
    Quit,
}

impl Stop {
    fn describe(&self) -> String {
        match self {
            Stop::Signal(s) => format!("{s} received"),
            Stop::Duration => "duration elapsed".into(),
            Stop::ChildExited(s) => format!("command {s}"),
            Stop::PidExited => "traced process exited".into(),
            Stop::Quit => "quit from the dashboard".into(),
        }
    }
}

/// Polls a map's fd with tokio.
fn register<T: std::os::fd::AsRawFd>(inner: T) -> std::io::Result<AsyncFd<T>> {
    // SAFETY: the fd belongs to `inner`, which the AsyncFd owns, so it stays open (and is not
    // reused for another file) for as long as it is registered.
    unsafe { AsyncFd::register(inner) }.map_err(|e| e.into())
}

/// Opens `-o FILE` before anything is attached: a bad path fails fast, not after a long run.
/// 0600 and handed to the sudo user: a trace names tasks and kernel pointers.
fn create_output(path: &std::path::Path) -> Result<BufWriter<File>> {
    let f = crate::outfile::create_private(path).context("cannot create the trace file")?;
    Ok(BufWriter::with_capacity(1 << 16, f))
}

pub async fn run(mut opts: RunOptions) -> Result<Summary> {
    loader::preflight()?;
    if let Some(pid) = opts.pid
        && !child::process_alive(pid) {
            anyhow::bail!("-p {pid}: no such process");
        }
    let out = opts.output.as_deref().map(create_output).transpose()?;
    let t = std::time::Instant::now();
    let kbtf = KernelBtf::open()?;
    log::debug!("start-up: kernel BTF read in {} ms", t.elapsed().as_millis());
    let mut tracer = Tracer::load(
        &Options { ring_bytes: opts.ring_bytes, force_tracepoint: opts.force_tracepoint, snapshot_ms: opts.snapshot_ms, every_hook: opts.all_events },
        &kbtf,
    )?;
    // Stacks are symbolized when first seen; without kallsyms they stay addresses.
    let kallsyms = crate::symbols::Kallsyms::load().map_err(|e| log::warn!("kernel stacks stay unsymbolized: {e:#}")).ok();
    let mut ring = register(tracer.take_events()?).context("registering the ring buffer with tokio")?;
    let mut logger = tracer.take_logger().and_then(|l| register(l).ok());

    let send_mask = if opts.all_events { all_send_mask() } else { default_send_mask() };
    tracer.fold_pairs(!opts.all_events);
    if let Some(c) = opts.comm {
        tracer.filter_comm(c);
    }
    let comm_name = opts.comm.map(|c| String::from_utf8_lossy(&c).trim_end_matches('\0').to_string());
    let (mut held, tgid, start_ns) = match (&opts.command, opts.pid) {
        (Some(argv), _) => {
            let born_after = loader::monotonic_ns();
            let c = child::spawn_held(argv)?;
            c.wait_blocked()?;
            let start = tracer.start_child(born_after, c.pid, send_mask)?;
            let pid = c.pid;
            (Some(c), pid, start)
        }
        (None, Some(p)) => (None, p, tracer.start(p, send_mask)?),
        (None, None) => (None, TGID_ALL, tracer.start(TGID_ALL, send_mask)?),
    };

    // Like bpftrace's "Attaching N probes...": the moment events start to flow, on stderr.
    let mut target = match (&held, tgid) {
        (Some(_), pid) => format!("command (pid {pid})"),
        (None, TGID_ALL) => "all tasks".to_string(),
        (None, pid) => format!("pid {pid}"),
    };
    if let Some(name) = &comm_name {
        target += &format!(" named {name:?}");
    }
    let mut families: std::collections::BTreeSet<&str> = tracer.attached.hooks.values().map(String::as_str).collect();
    let fn_hooks: Vec<&str> = tracer
        .attached
        .functions
        .values()
        .filter_map(|s| match s {
            crate::hooks::HookState::Attached(f) => Some(f.as_str()),
            _ => None,
        })
        .collect();
    families.extend(fn_hooks.iter().copied());
    if tracer.attached.snapshot.starts_with("iter/") {
        families.insert("iter");
    }
    let hooks_line = format!(
        "{} hooks via {}; VMA snapshots: {}",
        tracer.attached.hooks.len() + fn_hooks.len(),
        families.into_iter().collect::<Vec<_>>().join("+"),
        tracer.attached.snapshot
    );
    // Caught from before the line that says tracing has begun: a SIGINT or SIGTERM right after
    // it (a script that starts vmalock, waits for the line, and stops it) is a clean stop with a
    // summary and a whole trace, never the default action's kill.
    let mut sigint = signal(SignalKind::interrupt())?;
    let mut sigterm = signal(SignalKind::terminate())?;
    let mut observer = opts.observer.take().unwrap_or_else(|| Box::new(PrintVerdicts));
    let avail = tracer.attached.availability();
    observer.started(&Started {
        target: target.clone(),
        kernel_release: capability::kernel_release(),
        hooks: hooks_line.clone(),
        ring_bytes: opts.ring_bytes.into(),
        rules: RULES.iter().map(|r| (r.id, r.title, r.status(&avail).to_string())).collect(),
    });
    eprintln!("vmalock: tracing {target} ({hooks_line}); Ctrl-C to stop");

    let header = Header {
        tool_version: env!("CARGO_PKG_VERSION").into(),
        kernel_release: capability::kernel_release(),
        monotonic_start_ns: start_ns,
        unix_start_ns: std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos() as u64).unwrap_or(0),
        command: opts.argv.clone(),
        filter: Filter { tgid: (tgid != TGID_ALL).then_some(tgid), comm: comm_name.clone() },
        all_events: opts.all_events,
        folded_pairs: !opts.all_events,
        capabilities: serde_json::to_value(&tracer.attached)?,
        layout: serde_json::json!({ "task_struct.start_time": kbtf.required_offset("task_struct", "start_time")? }),
        ..Header::default()
    };
    let writer = out.map(|w| TraceWriter::with_format(w, &header, opts.trace_format)).transpose().context("writing the trace header")?;

    // Watchers for the ways a run ends.
    let (child_tx, mut child_rx) = oneshot::channel::<String>();
    if let Some(c) = held.as_mut() {
        c.release()?;
        let pid = c.pid;
        std::thread::spawn(move || {
            let _ = child_tx.send(HeldChild::wait(pid));
        });
    } else {
        drop(child_tx);
    }
    let sleep = tokio::time::sleep(opts.duration.unwrap_or(Duration::from_secs(u64::MAX / 4)));
    tokio::pin!(sleep);
    let mut pid_poll = tokio::time::interval(Duration::from_millis(200));
    let mut drain_tick = tokio::time::interval(loader::DRAIN_INTERVAL);
    drain_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut snapshot_tick = tokio::time::interval(Duration::from_millis(opts.snapshot_ms.max(1)));
    snapshot_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let stacks = tracer.take_stacks();
    let symbolize = |id: u32| -> Vec<String> {
        let addrs = loader::stack_ips(stacks.as_ref(), id);
        match &kallsyms {
            Some(k) => k.symbolize(&addrs),
            None => addrs.iter().map(|a| format!("{a:#x}")).collect(),
        }
    };

    let mut pipe = Pipeline::new(writer, observer);
    let mut state_tick = tokio::time::interval(TICK);
    state_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // A record is RawEvent plus the ring's 8-byte header, rounded to 8.
    let record_bytes = (std::mem::size_of::<tracer_common::RawEvent>() + 8).next_multiple_of(8);
    let mut missed_seen = 0u64;
    // The daemon's own CPU from here on, so a run's cost to the machine is visible apart from
    // its start-up (loading and verifying the programs).
    let cpu_at_start = loader::own_cpu_ns();
    let stop = loop {
        tokio::select! {
            guard = ring.readable_mut() => {
                let mut guard = guard?;
                let missed = read_missed(&mut tracer, &mut missed_seen)?;
                pipe.pump(guard.get_inner_mut(), missed, &symbolize)?;
                guard.clear_ready();
            }
            _ = drain_tick.tick() => {
                if pipe.observer.stop_requested() {
                    break match pipe.observer.stop_signal() {
                        Some(sig) => Stop::Signal(sig),
                        None => Stop::Quit,
                    };
                }
                let missed = read_missed(&mut tracer, &mut missed_seen)?;
                pipe.pump(ring.get_mut(), missed, &symbolize)?;
            }
            _ = state_tick.tick(), if pipe.observer.wants_ticks() => {
                let c = tracer.counters()?;
                let (held, waiting) = Tick::locks_of(&pipe.model);
                let tick = Tick {
                    ts_ns: loader::monotonic_ns(),
                    seen: c.seen.iter().enumerate().filter(|(_, n)| **n > 0).map(|(k, n)| (kind_name(k as u16), *n)).collect(),
                    events_received: pipe.events,
                    lost: c.lost(),
                    missed: c.missed,
                    ring_fill: (std::mem::take(&mut pipe.peak_drain) * record_bytes) as f64 / f64::from(opts.ring_bytes),
                    verdicts: pipe.verdicts,
                    held,
                    waiting,
                    held_other: Tick::other_locks_of(&pipe.model),
                };
                pipe.observer.tick(&tick);
            }
            _ = snapshot_tick.tick(), if opts.snapshot_ms > 0 => {
                tracer.snapshot()?;
            }
            Some(guard) = async { match logger.as_mut() { Some(l) => l.readable_mut().await.ok(), None => std::future::pending().await } } => {
                let mut guard = guard;
                guard.get_inner_mut().flush();
                guard.clear_ready();
            }
            _ = sigint.recv() => break Stop::Signal("SIGINT"),
            _ = sigterm.recv() => break Stop::Signal("SIGTERM"),
            _ = &mut sleep => break Stop::Duration,
            status = &mut child_rx, if held.is_some() => break Stop::ChildExited(status.unwrap_or_else(|_| "ended".into())),
            _ = pid_poll.tick(), if opts.pid.is_some() && held.is_none() => {
                if !child::process_alive(opts.pid.unwrap_or(0)) {
                    break Stop::PidExited;
                }
            }
        }
    };

    // A last snapshot while the target still runs (-d, signals), then stop the flow and take
    // what is already in the ring: nothing recorded is dropped.
    tracer.snapshot()?;
    tracer.pause()?;
    let mut writer = pipe.finish(ring.get_mut(), tracer.missed()?, &symbolize)?;
    if let Some(l) = logger.as_mut() {
        l.get_mut().flush();
    }
    let counters = tracer.counters()?;
    if counters.start_time_unreadable > 0 {
        log::warn!(
            "task_struct.start_time could not be read {} times: those events are not marked as from tasks traced since birth, \
             so what such a task held before its first event is unknown and a release it never took can go unreported. \
             The offset comes from this kernel's BTF: please report it with `vmalock probe`'s output",
            counters.start_time_unreadable
        );
    }
    if let (Some(c), false) = (held.as_ref(), matches!(stop, Stop::ChildExited(_))) {
        HeldChild::terminate(c.pid);
    }
    let duration_ns = loader::monotonic_ns().saturating_sub(start_ns);
    let tracing_cpu_ns = loader::own_cpu_ns().saturating_sub(cpu_at_start);
    if let Some(w) = writer.take() {
        let footer = Footer {
            events: w.events_written(),
            lost_events: counters.lost(),
            lost_per_cpu: counters.lost_per_cpu.clone(),
            duration_ns,
            stop_reason: stop.describe(),
        };
        let mut inner = w.finish(footer).context("writing the trace footer")?;
        inner.flush().context("flushing the trace file")?;
    }
    if let Some(g) = &opts.graph {
        let graph = pipe.model.lock_graph();
        crate::graph::write(g, &graph)?;
        eprintln!("vmalock: lock-order graph ({} edges, {} cycles) written to {}", graph.edges.len(), graph.cycles.len(), g.display());
    }
    // Dropping the tracer detaches every link and unloads every program and map.
    let attached = tracer.attached.clone();
    drop(ring);
    drop(logger);
    drop(tracer);
    Ok(Summary {
        stop_reason: stop.describe(),
        duration_ns,
        tracing_cpu_ns,
        seen: counters.seen.iter().enumerate().filter(|(_, n)| **n > 0).map(|(k, n)| (kind_name(k as u16), *n)).collect(),
        stats: pipe.model.stats().clone(),
        lost_per_cpu: counters.lost_per_cpu.clone(),
        missed: counters.missed,
        decode_errors: pipe.decode_errors,
        events_received: pipe.events,
        verdicts: pipe.verdicts as usize,
        attached,
        counters,
    })
}

#[cfg(test)]
mod default_mask_tests {
    use super::*;

    /// Every kind a rule judges is sent by default; only start_locking is filtered in the
    /// kernel (it passes under a per-VMA read lock), and `missed` is made in userspace.
    #[test]
    fn default_run_sends_every_kind_a_rule_judges() {
        let mask = default_send_mask();
        for k in 1..kind::COUNT as u16 {
            let sent = mask & kind_bit(k) != 0;
            assert_eq!(sent, k != kind::MMAP_START && k != kind::MISSED, "kind {k}");
        }
    }
}

/// The kernel's count of skipped hook hits, read before a drain. When it grew, per-VMA read
/// holds taken before now stop being believed in the kernel (one of the skipped hits may have
/// been a hold's end): see `Tracer::distrust_vma_read_holds`.
fn read_missed(tracer: &mut Tracer, seen: &mut u64) -> Result<u64> {
    let missed = tracer.missed()?;
    if missed > *seen {
        *seen = missed;
        tracer.distrust_vma_read_holds()?;
    }
    Ok(missed)
}
