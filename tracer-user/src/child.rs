//! `-c CMD`: a child that is forked first but execs only once the probes are attached, like
//! bpftrace's -c, so the trace sees the command from its first instruction.

use std::{ffi::CString, os::fd::{AsRawFd, FromRawFd, OwnedFd}};

use anyhow::{Context as _, Result, bail};

pub struct HeldChild {
    pub pid: u32,
    go: Option<OwnedFd>,
}

/// Forks a child that waits on a pipe before exec'ing `argv`.
pub fn spawn_held(argv: &[String]) -> Result<HeldChild> {
    if argv.is_empty() {
        bail!("-c needs a command");
    }
    // Everything the child needs is allocated before fork: after it only async-signal-safe calls.
    let args: Vec<CString> = argv
        .iter()
        .map(|a| CString::new(a.as_str()).with_context(|| format!("argument {a:?} contains a NUL byte")))
        .collect::<Result<_>>()?;
    let mut argp: Vec<*const libc::c_char> = args.iter().map(|a| a.as_ptr()).collect();
    argp.push(std::ptr::null());
    let mut fds = [0; 2];
    // SAFETY: valid array for pipe2.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(std::io::Error::last_os_error()).context("pipe2");
    }
    // SAFETY: fork; the child only calls async-signal-safe functions below.
    let pid = unsafe { libc::fork() };
    if pid < 0 {
        return Err(std::io::Error::last_os_error()).context("fork");
    }
    if pid == 0 {
        unsafe {
            libc::close(fds[1]);
            let mut b = 0u8;
            let n = libc::read(fds[0], (&mut b as *mut u8).cast(), 1);
            if n != 1 {
                // The tracer went away before attaching: never run the command untraced.
                libc::_exit(126);
            }
            libc::execvp(argp[0], argp.as_ptr());
            let msg = b"vmalock: cannot execute the -c command\n";
            libc::write(2, msg.as_ptr().cast(), msg.len());
            libc::_exit(127);
        }
    }
    // SAFETY: both fds are ours; the read end is only the child's.
    unsafe { libc::close(fds[0]) };
    let go = unsafe { OwnedFd::from_raw_fd(fds[1]) };
    Ok(HeldChild { pid: pid as u32, go: Some(go) })
}

impl HeldChild {
    /// Waits (up to 5 s) until the child sleeps in its read of the go-pipe: from then on it holds
    /// no mm lock, so the tracer can start following it without catching half a lock pair.
    pub fn wait_blocked(&self) -> Result<()> {
        let t0 = std::time::Instant::now();
        loop {
            match process_state(self.pid) {
                Some('S') => return Ok(()),
                Some('Z') | Some('X') | None => bail!("the -c child {} died before exec", self.pid),
                _ if t0.elapsed() > std::time::Duration::from_secs(5) => {
                    bail!("the -c child {} did not reach its start gate within 5 s", self.pid)
                }
                _ => std::thread::sleep(std::time::Duration::from_millis(1)),
            }
        }
    }

    /// Lets the child exec.
    pub fn release(&mut self) -> Result<()> {
        if let Some(fd) = self.go.take() {
            // SAFETY: writing one byte to our pipe.
            if unsafe { libc::write(fd.as_raw_fd(), [1u8].as_ptr().cast(), 1) } != 1 {
                return Err(std::io::Error::last_os_error()).context("releasing the -c child");
            }
        }
        Ok(())
    }

    /// Blocks until the child exits; returns its wait status as text.
    pub fn wait(pid: u32) -> String {
        let mut status = 0;
        loop {
            // SAFETY: plain waitpid on our own child.
            let r = unsafe { libc::waitpid(pid as i32, &mut status, 0) };
            if r == pid as i32 {
                break;
            }
            if r < 0 && std::io::Error::last_os_error().raw_os_error() != Some(libc::EINTR) {
                return "unknown (waitpid failed)".into();
            }
        }
        if libc::WIFEXITED(status) {
            format!("exited with status {}", libc::WEXITSTATUS(status))
        } else if libc::WIFSIGNALED(status) {
            format!("killed by signal {}", libc::WTERMSIG(status))
        } else {
            format!("wait status {status:#x}")
        }
    }

    /// Terminates a child that is still running when tracing stops (-d, Ctrl-C, SIGTERM).
    pub fn terminate(pid: u32) {
        // SAFETY: signalling our own child.
        unsafe { libc::kill(pid as i32, libc::SIGTERM) };
    }
}

/// The state letter of /proc/PID/stat (R, S, D, Z, ...), or None when the process is gone.
pub fn process_state(pid: u32) -> Option<char> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // "pid (comm) S ...": comm may contain spaces and parentheses, so split at the last ')'.
    stat.rsplit_once(')')?.1.trim_start().chars().next()
}

/// True while `pid` runs; a zombie (exited, not yet reaped by its parent) counts as gone.
pub fn process_alive(pid: u32) -> bool {
    !matches!(process_state(pid), None | Some('Z') | Some('X'))
}

/// `-c "cmd arg"`: split on whitespace, as bpftrace does (no shell quoting).
pub fn split_command(cmd: &str) -> Vec<String> {
    cmd.split_whitespace().map(str::to_string).collect()
}
