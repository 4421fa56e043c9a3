//! `vmalock watch`: the live dashboard (ratatui + crossterm).
//!
//! Ingest (the live run, or a replayed file) runs on its own thread and feeds the screen
//! through a bounded channel ([`feed`]); the screen thread drains it at frame rate, so drawing
//! never holds up the ring buffer. [`app`] is the pure state, [`view`] draws it, [`keys`] maps
//! keys to actions. The terminal is restored on quit, on panic and on SIGTERM.

pub mod app;
pub mod feed;
pub mod keys;
pub mod view;

use std::{
    io::{Read as _, Seek as _, Write as _},
    os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
    path::PathBuf,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
        mpsc::Receiver,
    },
    time::Duration,
};

use anyhow::{Context as _, Result, bail};
use ratatui::crossterm::event::{self, Event, KeyEventKind};

use crate::{live, report::Summary};
use app::App;
use feed::Update;

/// How long the screen waits for a key before drawing again (10 frames/s).
const FRAME: Duration = Duration::from_millis(100);

pub(crate) static TERMINATE: AtomicBool = AtomicBool::new(false);

extern "C" fn on_sigterm(_: libc::c_int) {
    TERMINATE.store(true, Ordering::Relaxed);
}

/// Where the dashboard's data comes from.
pub enum Source {
    Live(live::RunOptions),
    Replay(PathBuf),
}

/// Runs the dashboard until `q`, Ctrl-C or SIGTERM; then prints the violation groups to stdout
/// and the run's summary to stderr, as the text report would.
pub fn watch(source: Source) -> Result<()> {
    use std::io::IsTerminal as _;
    if !std::io::stdout().is_terminal() {
        bail!("watch needs a terminal on standard output; use `vmalock run` (the text report) when piping or in CI");
    }
    // SAFETY: the handler only stores to an atomic, which is async-signal-safe.
    unsafe { libc::signal(libc::SIGTERM, on_sigterm as *const () as libc::sighandler_t) };
    let (tx, rx) = feed::channel();
    let stop = Arc::new(AtomicBool::new(false));
    let ingest = match source {
        Source::Live(mut opts) => {
            opts.observer = Some(Box::new(feed::Feed::new(tx.clone(), stop.clone())));
            std::thread::Builder::new().name("ingest".into()).spawn(move || -> Result<Option<Summary>> {
                let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
                let r = rt.block_on(live::run(opts));
                let why = match &r {
                    Ok(s) => s.stop_reason.clone(),
                    Err(e) => format!("error: {e:#}"),
                };
                let _ = tx.send(Update::Ended(why));
                r.map(Some)
            })?
        }
        Source::Replay(path) => {
            let f = std::fs::File::open(&path).with_context(|| format!("cannot open {}", path.display()))?;
            let name = path.display().to_string();
            std::thread::Builder::new().name("ingest".into()).spawn(move || -> Result<Option<Summary>> {
                let r = feed::replay(std::io::BufReader::new(f), &name, 1_000_000_000, |u| {
                    let _ = tx.send(u);
                });
                if let Err(e) = &r {
                    let _ = tx.send(Update::Ended(format!("error: {}: {e}", name)));
                }
                r.map(|_| None).map_err(|e| anyhow::anyhow!("{name}: {e}"))
            })?
        }
    };
    // What ingest and its libraries print to stderr would scribble over the screen: keep it
    // and print it once the terminal is back.
    let captured = StderrCapture::start()?;
    let mut app = App::new();
    let ui = run_screen(&mut app, &rx);
    ratatui::restore();
    let logged = captured.stop();
    // Detach: the live run sees this at its next drain and unloads everything.
    stop.store(true, Ordering::Relaxed);
    drop(rx);
    let summary = ingest.join().map_err(|_| anyhow::anyhow!("the ingest thread panicked"))?;
    let _ = std::io::stderr().write_all(&logged);
    ui?;
    let mut out = std::io::stdout().lock();
    for g in app.groups() {
        writeln!(out, "{:>6} {} at {} (last: {})", g.count, g.rule, g.site, g.last.what)?;
    }
    drop(out);
    if let Some(s) = summary? {
        eprintln!("{s}");
    }
    Ok(())
}

fn run_screen(app: &mut App, rx: &Receiver<Update>) -> Result<()> {
    let mut terminal = ratatui::try_init().context("cannot set up the terminal")?;
    loop {
        // Everything ingest sent since the last frame; the channel is bounded, so this ends.
        while let Ok(u) = rx.try_recv() {
            // Signals end the dashboard; so does a run that failed (its error is printed after).
            let signalled = matches!(&u, Update::Ended(why) if why.starts_with("SIGTERM") || why.starts_with("SIGINT") || why.starts_with("error:"));
            app.update(u);
            if signalled {
                return Ok(());
            }
        }
        terminal.draw(|f| view::draw(f, app))?;
        if TERMINATE.load(Ordering::Relaxed) {
            return Ok(());
        }
        if event::poll(FRAME)?
            && let Event::Key(k) = event::read()?
            && k.kind == KeyEventKind::Press
            && let Some(a) = keys::action_for(k, app.prompt.is_some())
        {
            app.handle(a);
        }
        if app.quit {
            return Ok(());
        }
    }
}

/// Standard error redirected into an anonymous file while the screen is up. A panic hook puts
/// the real stderr back first, so a panic message is never swallowed.
struct StderrCapture {
    saved: OwnedFd,
    file: std::fs::File,
}

impl StderrCapture {
    fn start() -> Result<Self> {
        // SAFETY: memfd_create with a valid C string; dup/dup2 on fds we own or fd 2.
        unsafe {
            let fd = libc::memfd_create(c"vmalock-stderr".as_ptr(), libc::MFD_CLOEXEC);
            if fd < 0 {
                return Err(std::io::Error::last_os_error()).context("memfd_create for stderr");
            }
            let file = std::fs::File::from_raw_fd(fd);
            let saved = libc::dup(2);
            if saved < 0 {
                return Err(std::io::Error::last_os_error()).context("dup(2)");
            }
            let saved = OwnedFd::from_raw_fd(saved);
            let saved_raw = saved.as_raw_fd();
            let prev = std::panic::take_hook();
            std::panic::set_hook(Box::new(move |info| {
                libc::dup2(saved_raw, 2);
                ratatui::restore();
                prev(info);
            }));
            libc::dup2(file.as_raw_fd(), 2);
            Ok(StderrCapture { saved, file })
        }
    }

    /// Puts stderr back and returns what was written meanwhile.
    fn stop(mut self) -> Vec<u8> {
        // SAFETY: both fds are open and ours.
        unsafe { libc::dup2(self.saved.as_raw_fd(), 2) };
        let mut out = Vec::new();
        if self.file.rewind().is_ok() {
            let _ = self.file.read_to_end(&mut out);
        }
        out
    }
}
