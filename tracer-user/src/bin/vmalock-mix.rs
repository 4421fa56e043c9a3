//! A mixed mm workload for vmalock's silence tests: on a clean kernel, tracing it must report no
//! violation. Where vmalock-workload repeats one mmap/fault/mprotect/munmap loop, this one reaches
//! as many of the kernel's mm locking paths as a process can: every VMA-modifying syscall (each
//! splits a VMA and merges it back), the page walks behind madvise and /proc, userfaultfd
//! registration, fork's dup_mmap, brk, and concurrent page faults on shared VMAs.
//!
//! Each round runs `--threads T` workers plus the main thread over the same per-VMA operations
//! (`churn`), with faults on two mappings all of them share; the main thread also forks and reads
//! /proc while the workers run, and moves brk once they have joined. At the end it prints
//!
//!   vmalock-mix: done rounds=N ops=<syscalls and /proc reads> skipped=<op:count,...|none>
//!
//! `skipped` counts the operations this kernel refused with an errno listed as tolerated for that
//! operation (a feature it lacks: THP, MADV_COLD, NUMA, userfaultfd, a memlock limit). Any other
//! failure panics with the operation and errno, so a test sees a non-zero exit.
//!
//! `--sleep-first MS` and `--wait-for PATH` work as in vmalock-workload.
//!
//! usage: vmalock-mix [--threads T] [--iters N] [--sleep-first MS] [--wait-for PATH]

#[path = "workload_args/mod.rs"]
mod workload_args;

use workload_args::{arg, wait_to_start};

use std::{
    collections::BTreeMap,
    fs::{File, OpenOptions},
    io::Read,
    os::{fd::AsRawFd, unix::fs::FileExt},
    sync::{
        atomic::{AtomicU64, Ordering},
        Mutex, OnceLock,
    },
    thread,
};

use libc::{c_int, c_long, c_void, EINVAL, ENOMEM, ENOSYS, EPERM};

// ---------------------------------------------------------------------------------------------
// Counting and checking

/// Syscalls and /proc reads issued (by every thread; forked children not included).
static OPS: AtomicU64 = AtomicU64::new(0);
/// Tolerated failures: op → (count, first errno).
static SKIPS: Mutex<BTreeMap<&'static str, (u64, c_int)>> = Mutex::new(BTreeMap::new());

fn errno() -> c_int {
    std::io::Error::last_os_error().raw_os_error().unwrap_or(0)
}

fn errno_name(e: c_int) -> String {
    let name = match e {
        libc::EPERM => "EPERM",
        libc::ENOENT => "ENOENT",
        libc::EINTR => "EINTR",
        libc::EIO => "EIO",
        libc::EAGAIN => "EAGAIN",
        libc::ENOMEM => "ENOMEM",
        libc::EACCES => "EACCES",
        libc::EFAULT => "EFAULT",
        libc::EBUSY => "EBUSY",
        libc::EEXIST => "EEXIST",
        libc::EINVAL => "EINVAL",
        libc::ENOSYS => "ENOSYS",
        libc::EOPNOTSUPP => "EOPNOTSUPP",
        _ => return format!("errno {e}"),
    };
    name.into()
}

fn skip(op: &'static str, e: c_int) {
    let mut skips = SKIPS.lock().unwrap();
    let entry = skips.entry(op).or_insert((0, e));
    entry.0 += 1;
}

/// Counts one syscall. A result other than -1 is success (true). For -1, an errno in `tolerated`
/// is counted as a skip (false); any other errno panics with the op's name.
fn check(op: &'static str, ret: c_long, tolerated: &[c_int]) -> bool {
    let e = errno(); // before anything else can overwrite it
    OPS.fetch_add(1, Ordering::Relaxed);
    if ret != -1 {
        return true;
    }
    if tolerated.contains(&e) {
        skip(op, e);
        return false;
    }
    panic!("vmalock-mix: {op} failed: {} ({e})", errno_name(e));
}

/// `check` for calls that must succeed.
fn must(op: &'static str, ret: c_long) {
    check(op, ret, &[]);
}

// ---------------------------------------------------------------------------------------------
// Memory helpers

fn page() -> usize {
    static PAGE: OnceLock<usize> = OnceLock::new();
    // SAFETY: sysconf has no memory-safety preconditions.
    *PAGE.get_or_init(|| unsafe { libc::sysconf(libc::_SC_PAGESIZE) } as usize)
}

const RW: c_int = libc::PROT_READ | libc::PROT_WRITE;
const ANON_PRIVATE: c_int = libc::MAP_PRIVATE | libc::MAP_ANONYMOUS;
const ANON_SHARED: c_int = libc::MAP_SHARED | libc::MAP_ANONYMOUS;

/// mmap that must succeed. `addr` is a hint, or the exact place with MAP_FIXED.
fn map(op: &'static str, addr: usize, pages: usize, prot: c_int, flags: c_int, fd: c_int) -> usize {
    // SAFETY: with MAP_FIXED callers only replace ranges they mapped themselves.
    let p = unsafe { libc::mmap(addr as *mut c_void, pages * page(), prot, flags, fd, 0) };
    let e = errno();
    OPS.fetch_add(1, Ordering::Relaxed);
    assert_ne!(p, libc::MAP_FAILED, "vmalock-mix: {op} failed: {} ({e})", errno_name(e));
    if flags & libc::MAP_FIXED != 0 {
        assert_eq!(p as usize, addr, "vmalock-mix: {op}: MAP_FIXED mapped elsewhere");
    }
    p as usize
}

fn unmap(addr: usize, pages: usize) {
    // SAFETY: callers unmap only their own mappings, which nothing references any more.
    must("munmap", unsafe { libc::munmap(addr as *mut c_void, pages * page()) } as c_long);
}

fn protect(addr: usize, pages: usize, prot: c_int) {
    // SAFETY: changes protection of our own mapping; nothing touches it while it is read-only.
    must("mprotect", unsafe { libc::mprotect(addr as *mut c_void, pages * page(), prot) } as c_long);
}

/// madvise `advice` on a range; `tolerated` lists the errnos of kernels without it.
fn advise(op: &'static str, addr: usize, pages: usize, advice: c_int, tolerated: &[c_int]) {
    // SAFETY: advice on our own mapping; DONTNEED/FREE only discard contents we do not rely on.
    let ret = unsafe { libc::madvise(addr as *mut c_void, pages * page(), advice) };
    check(op, ret as c_long, tolerated);
}

/// Writes one byte into each page: a page fault per page the first time (per-VMA lock via
/// lock_vma_under_rcu, or mmap_lock for read as the fallback).
fn touch(addr: usize, pages: usize, value: u8) {
    for i in 0..pages {
        // SAFETY: the caller owns [addr, addr + pages * page()) mapped writable.
        unsafe { ((addr + i * page()) as *mut u8).write_volatile(value) };
    }
}

fn read_page(addr: usize) -> u8 {
    // SAFETY: the caller owns a readable page at addr.
    unsafe { (addr as *const u8).read_volatile() }
}

// ---------------------------------------------------------------------------------------------
// The operations. Each says which kernel path (and so which locking rule) it is there for.

/// mmap, MAP_FIXED over the middle, an mprotect split and merge, the madvise page walks, mlock,
/// mlock2 and mbind on one private anonymous mapping.
fn anon_private(value: u8) {
    let p = map("mmap(anon private)", 0, 16, RW, ANON_PRIVATE, -1);
    touch(p, 16, value);
    let pg = page();

    // MAP_FIXED over an existing mapping: mmap_region() gathers and unmaps the old middle
    // (vms_gather_munmap_vmas → __split_vma twice) under mmap_lock for write, with the VMAs
    // write-locked, before inserting the new VMA (vma_merge_new_range may merge it back).
    map("mmap(MAP_FIXED anon)", p + 4 * pg, 4, RW, ANON_PRIVATE | libc::MAP_FIXED, -1);
    touch(p + 4 * pg, 4, value);

    // mprotect of the middle: mprotect_fixup → vma_modify_flags splits into three (__split_vma);
    // restoring the protection merges them back (vma_merge_existing_range).
    protect(p + 6 * pg, 2, libc::PROT_READ);
    protect(p + 6 * pg, 2, RW);

    // madvise behaviours that walk page tables (madvise_walk_vmas → the per-behaviour walker,
    // under mmap_lock for read or the VMA's read lock): zap (DONTNEED), deactivate (COLD),
    // reclaim (PAGEOUT), lazy free (FREE). Before mlock: COLD/PAGEOUT refuse VM_LOCKED VMAs.
    advise("madvise_dontneed", p, 2, libc::MADV_DONTNEED, &[]);
    advise("madvise_cold", p + 2 * pg, 2, libc::MADV_COLD, &[EINVAL]);
    advise("madvise_pageout", p + 4 * pg, 2, libc::MADV_PAGEOUT, &[EINVAL]);
    advise("madvise_free", p + 8 * pg, 2, libc::MADV_FREE, &[EINVAL]);
    // HUGEPAGE/NOHUGEPAGE change vm_flags: madvise_vma_behavior → madvise_update_vma →
    // vma_modify_flags, under mmap_lock for write. EINVAL without CONFIG_TRANSPARENT_HUGEPAGE.
    advise("madvise_hugepage", p + 10 * pg, 2, libc::MADV_HUGEPAGE, &[EINVAL]);
    advise("madvise_nohugepage", p + 10 * pg, 2, libc::MADV_NOHUGEPAGE, &[EINVAL]);

    // mlock of the middle: mlock_fixup splits and sets VM_LOCKED (then populates the range);
    // munlock clears it and merges back. EPERM/ENOMEM: no CAP_IPC_LOCK and a small memlock limit.
    // SAFETY: (un)locking our own mapping.
    if check("mlock", unsafe { libc::mlock((p + 12 * pg) as *const c_void, 2 * pg) } as c_long, &[EPERM, ENOMEM]) {
        // SAFETY: as above.
        check("munlock", unsafe { libc::munlock((p + 12 * pg) as *const c_void, 2 * pg) } as c_long, &[EPERM, ENOMEM]);
    }
    // mlock2(MLOCK_ONFAULT): the same fixup with VM_LOCKONFAULT, which populates nothing.
    // ENOSYS/EINVAL: kernels before 4.4.
    const MLOCK_ONFAULT: c_long = 1;
    // SAFETY: as above; the raw syscall avoids needing glibc's wrapper (2.27+).
    let ret = unsafe { libc::syscall(libc::SYS_mlock2, p + 12 * pg, 2 * pg, MLOCK_ONFAULT) };
    if check("mlock2_onfault", ret, &[EPERM, ENOMEM, ENOSYS, EINVAL]) {
        // SAFETY: as above.
        check("munlock", unsafe { libc::munlock((p + 12 * pg) as *const c_void, 2 * pg) } as c_long, &[EPERM, ENOMEM]);
    }

    mbind_part(p + 4 * pg, 4);
    unmap(p, 16);
}

/// mbind on part of a mapping: mbind_range → vma_modify_policy splits and sets the policy;
/// MPOL_MF_MOVE also walks the range's pages (queue_pages_range) under mmap_lock for write.
/// MPOL_DEFAULT then merges the VMAs back. ENOSYS without CONFIG_NUMA; EINVAL if node 0 is off.
fn mbind_part(addr: usize, pages: usize) {
    const MPOL_MF_MOVE: c_long = 1 << 1;
    let len = pages * page();
    let node0: u64 = 1;
    let nodemask = &node0 as *const u64;
    for (op, mode, flags) in [("mbind_bind", libc::MPOL_BIND, MPOL_MF_MOVE), ("mbind_preferred", libc::MPOL_PREFERRED, 0)] {
        // SAFETY: nodemask points at 64 valid bits; addr..addr+len is our own mapping.
        let ret = unsafe { libc::syscall(libc::SYS_mbind, addr, len, mode as c_long, nodemask, 64 as c_long, flags) };
        if !check(op, ret, &[ENOSYS, EINVAL]) {
            return;
        }
        // SAFETY: as above, with no nodemask.
        let ret = unsafe { libc::syscall(libc::SYS_mbind, addr, len, libc::MPOL_DEFAULT as c_long, 0usize, 0 as c_long, 0 as c_long) };
        check("mbind_default", ret, &[ENOSYS, EINVAL]);
    }
}

/// mremap: grow with MREMAP_MAYMOVE (may move: copy_vma + move_page_tables, which takes the
/// rmap locks), shrink in place (do_vmi_munmap of the tail), and MREMAP_FIXED onto a reserved
/// range (unmaps the target first, then moves).
fn remap(value: u8) {
    let pg = page();
    let p = map("mmap(anon private)", 0, 4, RW, ANON_PRIVATE, -1);
    touch(p, 4, value);
    // SAFETY: remapping our own mapping; the old address is not used after a move.
    let q = unsafe { libc::mremap(p as *mut c_void, 4 * pg, 8 * pg, libc::MREMAP_MAYMOVE) };
    must("mremap(grow)", if q == libc::MAP_FAILED { -1 } else { 0 });
    let q = q as usize;
    touch(q, 8, value);
    // SAFETY: as above.
    let r = unsafe { libc::mremap(q as *mut c_void, 8 * pg, 2 * pg, 0) };
    must("mremap(shrink)", if r == libc::MAP_FAILED { -1 } else { 0 });
    assert_eq!(r as usize, q, "vmalock-mix: mremap shrink moved the mapping");
    let dst = map("mmap(PROT_NONE target)", 0, 2, libc::PROT_NONE, ANON_PRIVATE, -1);
    // SAFETY: as above; dst is our own reservation, replaced by the move.
    let s = unsafe { libc::mremap(q as *mut c_void, 2 * pg, 2 * pg, libc::MREMAP_MAYMOVE | libc::MREMAP_FIXED, dst as *mut c_void) };
    must("mremap(MREMAP_FIXED)", if s == libc::MAP_FAILED { -1 } else { 0 });
    assert_eq!(s as usize, dst, "vmalock-mix: MREMAP_FIXED moved elsewhere");
    assert_eq!(read_page(dst), value, "vmalock-mix: MREMAP_FIXED lost the contents");
    unmap(dst, 2);
}

/// A small shared anonymous (shmem-backed) mapping of this thread's: shmem faults, an mprotect
/// split and merge, COLD/PAGEOUT on shmem pages, mlock (which populates through shmem_fault).
fn anon_shared(value: u8) {
    let pg = page();
    let p = map("mmap(anon shared)", 0, 8, RW, ANON_SHARED, -1);
    touch(p, 8, value);
    protect(p + 2 * pg, 2, libc::PROT_READ);
    protect(p + 2 * pg, 2, RW);
    advise("madvise_cold", p, 4, libc::MADV_COLD, &[EINVAL]);
    advise("madvise_pageout", p + 4 * pg, 4, libc::MADV_PAGEOUT, &[EINVAL]);
    // SAFETY: (un)locking our own mapping.
    if check("mlock", unsafe { libc::mlock(p as *const c_void, 4 * pg) } as c_long, &[EPERM, ENOMEM]) {
        // SAFETY: as above.
        check("munlock", unsafe { libc::munlock(p as *const c_void, 4 * pg) } as c_long, &[EPERM, ENOMEM]);
    }
    unmap(p, 8);
}

/// File-backed mappings of a temporary file in /tmp: shared (filemap_fault, page_mkwrite, the
/// i_mmap rwsem on map/unmap), private (read fault then COW), and a file mapped MAP_FIXED over
/// the middle of an anonymous mapping (split + file VMA insert). COLD/PAGEOUT walk file pages.
fn file_backed(tag: &str, value: u8) {
    let pg = page();
    let path = format!("/tmp/vmalock-mix.{}.{tag}", std::process::id());
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .open(&path)
        .unwrap_or_else(|e| panic!("vmalock-mix: create {path}: {e}"));
    std::fs::remove_file(&path).unwrap_or_else(|e| panic!("vmalock-mix: unlink {path}: {e}"));
    file.set_len((16 * pg) as u64).unwrap_or_else(|e| panic!("vmalock-mix: truncate {path}: {e}"));
    OPS.fetch_add(3, Ordering::Relaxed);
    let fd = file.as_raw_fd();

    let shared = map("mmap(file shared)", 0, 16, RW, libc::MAP_SHARED, fd);
    touch(shared, 16, value);
    protect(shared + 4 * pg, 4, libc::PROT_READ);
    protect(shared + 4 * pg, 4, RW);
    advise("madvise_cold", shared, 8, libc::MADV_COLD, &[EINVAL]);
    advise("madvise_pageout", shared + 8 * pg, 8, libc::MADV_PAGEOUT, &[EINVAL]);

    let private = map("mmap(file private)", 0, 16, RW, libc::MAP_PRIVATE, fd);
    assert_eq!(read_page(private), value, "vmalock-mix: file mapping does not show the shared write");
    touch(private, 4, value.wrapping_add(1));

    let anon = map("mmap(anon private)", 0, 8, RW, ANON_PRIVATE, -1);
    touch(anon, 8, value);
    map("mmap(MAP_FIXED file)", anon + 2 * pg, 4, RW, libc::MAP_SHARED | libc::MAP_FIXED, fd);
    assert_eq!(read_page(anon + 2 * pg), value, "vmalock-mix: MAP_FIXED file mapping shows the wrong page");

    unmap(anon, 8);
    unmap(private, 16);
    unmap(shared, 16);
}

// userfaultfd ABI (include/uapi/linux/userfaultfd.h), defined here because libc has none of it.
#[repr(C)]
struct UffdioApi {
    api: u64,
    features: u64,
    ioctls: u64,
}
#[repr(C)]
struct UffdioRange {
    start: u64,
    len: u64,
}
#[repr(C)]
struct UffdioRegister {
    range: UffdioRange,
    mode: u64,
    ioctls: u64,
}
const UFFD_API: u64 = 0xAA;
const UFFDIO_REGISTER_MODE_MISSING: u64 = 1;

/// _IOC from include/uapi/asm-generic/ioctl.h (x86_64 uses the generic layout): direction in
/// bits 30-31, size in 16-29, type in 8-15, number in 0-7.
const fn ioc(dir: u64, ty: u64, nr: u64, size: usize) -> u64 {
    (dir << 30) | ((size as u64) << 16) | (ty << 8) | nr
}
const IOC_WRITE: u64 = 1;
const IOC_READ: u64 = 2;
const UFFDIO: u64 = 0xAA;
const UFFDIO_API: u64 = ioc(IOC_READ | IOC_WRITE, UFFDIO, 0x3F, size_of::<UffdioApi>());
const UFFDIO_REGISTER: u64 = ioc(IOC_READ | IOC_WRITE, UFFDIO, 0x00, size_of::<UffdioRegister>());
const UFFDIO_UNREGISTER: u64 = ioc(IOC_READ, UFFDIO, 0x01, size_of::<UffdioRange>());
// The values the kernel headers give on x86_64.
const _: () = assert!(UFFDIO_API == 0xC018_AA3F);
const _: () = assert!(UFFDIO_REGISTER == 0xC020_AA00);
const _: () = assert!(UFFDIO_UNREGISTER == 0x8010_AA01);

/// userfaultfd: UFFDIO_REGISTER on the middle of a mapping (userfaultfd_register →
/// vma_modify_flags_uffd splits, under mmap_lock for write), UFFDIO_UNREGISTER (merges back),
/// then a second registration left for close() to undo (userfaultfd_release walks every VMA
/// under mmap_lock for write). The registered pages are never touched: a fault would block.
/// EPERM: unprivileged and vm.unprivileged_userfaultfd=0; ENOSYS: no CONFIG_USERFAULTFD.
fn uffd() {
    let pg = page();
    // SAFETY: creates a new descriptor; no memory is passed.
    let fd = unsafe { libc::syscall(libc::SYS_userfaultfd, (libc::O_CLOEXEC | libc::O_NONBLOCK) as c_long) };
    if !check("userfaultfd", fd, &[EPERM, ENOSYS]) {
        return;
    }
    let fd = fd as c_int;
    let mut api = UffdioApi { api: UFFD_API, features: 0, ioctls: 0 };
    // SAFETY: api is a live uffdio_api the kernel reads and writes.
    must("UFFDIO_API", unsafe { libc::ioctl(fd, UFFDIO_API as _, &mut api) } as c_long);

    let p = map("mmap(anon private)", 0, 8, RW, ANON_PRIVATE, -1);
    let register = |start: usize, pages: usize| {
        let mut reg = UffdioRegister {
            range: UffdioRange { start: start as u64, len: (pages * pg) as u64 },
            mode: UFFDIO_REGISTER_MODE_MISSING,
            ioctls: 0,
        };
        // SAFETY: reg is a live uffdio_register; the range is our own untouched mapping.
        must("UFFDIO_REGISTER", unsafe { libc::ioctl(fd, UFFDIO_REGISTER as _, &mut reg) } as c_long);
    };
    register(p + 2 * pg, 4);
    let mut range = UffdioRange { start: (p + 2 * pg) as u64, len: (4 * pg) as u64 };
    // SAFETY: range is a live uffdio_range.
    must("UFFDIO_UNREGISTER", unsafe { libc::ioctl(fd, UFFDIO_UNREGISTER as _, &mut range) } as c_long);
    register(p + 4 * pg, 2);
    // SAFETY: fd is ours and closed once.
    must("close(userfaultfd)", unsafe { libc::close(fd) } as c_long);
    // Not touched even now: a fork child may still hold the descriptor, so the release (and
    // with it the unregistration) can happen later.
    unmap(p, 8);
}

/// Reads 8-byte pagemap entries for a few pages (pagemap_read → walk_page_range under
/// mmap_lock for read).
fn pagemap(addr: usize, pages: usize) {
    let f = File::open("/proc/self/pagemap").expect("vmalock-mix: open /proc/self/pagemap");
    for i in (0..pages).step_by(pages.div_ceil(4).max(1)) {
        let mut entry = [0u8; 8];
        let off = ((addr + i * page()) / page() * 8) as u64;
        f.read_exact_at(&mut entry, off).unwrap_or_else(|e| panic!("vmalock-mix: read pagemap: {e}"));
        OPS.fetch_add(1, Ordering::Relaxed);
    }
}

/// Reads a whole /proc/self file. smaps and smaps_rollup walk every VMA's page tables
/// (smap_gather_stats), numa_maps too (show_numa_map → walk_page_vma), maps only the VMA tree.
/// Returns false if the file does not exist (numa_maps without CONFIG_NUMA).
fn read_proc(name: &'static str) -> bool {
    let path = format!("/proc/self/{name}");
    let mut buf = Vec::new();
    match File::open(&path).and_then(|mut f| f.read_to_end(&mut buf)) {
        Ok(_) => {
            OPS.fetch_add(1, Ordering::Relaxed);
            true
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            OPS.fetch_add(1, Ordering::Relaxed);
            skip(name, libc::ENOENT);
            false
        }
        Err(e) => panic!("vmalock-mix: read {path}: {e}"),
    }
}

/// fork: dup_mmap copies every VMA under the parent's mmap_lock for write (each VMA
/// write-locked) while the workers keep faulting. The child breaks COW on the shared round's
/// private mapping, mprotects it (its own mm's locks), and exits (exit_mmap). It only makes raw
/// syscalls, so it cannot deadlock on a lock another thread held at fork time.
fn fork_child(private: usize, pages: usize) {
    // SAFETY: the child runs only the async-signal-safe code below and _exit.
    let pid = unsafe { libc::fork() };
    must("fork", pid as c_long);
    if pid == 0 {
        touch(private, pages, 0x5a);
        // SAFETY: in the child, on its copy of the mapping; then leave without unwinding.
        unsafe {
            if libc::mprotect(private as *mut c_void, pages * page(), libc::PROT_READ) != 0 {
                libc::_exit(3);
            }
            libc::_exit(0);
        }
    }
    let mut status = 0;
    loop {
        // SAFETY: waits for our own child.
        let ret = unsafe { libc::waitpid(pid, &mut status, 0) };
        if ret == -1 && errno() == libc::EINTR {
            continue;
        }
        must("waitpid", ret as c_long);
        break;
    }
    assert!(libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0, "vmalock-mix: fork child failed: status {status:#x}");
}

/// brk grow and shrink: do_brk_flags (extends or creates the heap VMA), a fault in it, then
/// the shrink path (do_vmi_align_munmap). Only while no other thread runs, because malloc's
/// main arena also moves brk. ENOMEM: something is mapped right after the heap.
fn brk() {
    let len = 16 * page();
    // SAFETY: grows the heap by len; the pages are ours until the shrink below, and nothing else
    // moves brk meanwhile (single-threaded, no allocation in between).
    let old = unsafe { libc::sbrk(len as libc::intptr_t) };
    if !check("brk", if old as isize == -1 { -1 } else { 0 }, &[ENOMEM]) {
        return;
    }
    touch(old as usize, 16, 7);
    // SAFETY: gives back exactly what we took.
    let top = unsafe { libc::sbrk(-(len as libc::intptr_t)) };
    must("brk(shrink)", if top as isize == -1 { -1 } else { 0 });
}

/// The per-VMA operations every thread (workers and main) runs each round, plus concurrent
/// faults on its own pages of the round's two shared mappings.
fn churn(tag: String, round: u64, slot: usize, slots: usize, shared: usize, private: usize, pages: usize) {
    let value = round as u8;
    // Faults on the same VMAs from every thread at once: lock_vma_under_rcu on both, shmem
    // faults on `shared`, anonymous faults (anon_vma_prepare) on `private`.
    for i in (slot..pages).step_by(slots) {
        touch(shared + i * page(), 1, value);
        touch(private + i * page(), 1, value);
    }
    anon_private(value);
    anon_shared(value);
    remap(value);
    file_backed(&tag, value);
    uffd();
    pagemap(private, pages);
}


fn main() {
    let args: Vec<String> = std::env::args().collect();
    let threads = arg(&args, "--threads", 4) as usize;
    let iters = arg(&args, "--iters", 20);
    wait_to_start(&args);

    const FORKS_PER_ROUND: usize = 2;
    let slots = threads + 1;
    let pages = 8 * slots;
    for round in 0..iters {
        // Two mappings every thread faults on concurrently this round.
        let shared = map("mmap(anon shared)", 0, pages, RW, ANON_SHARED, -1);
        let private = map("mmap(anon private)", 0, pages, RW, ANON_PRIVATE, -1);
        thread::scope(|s| {
            for t in 0..threads {
                s.spawn(move || churn(format!("{round}.{t}"), round, t, slots, shared, private, pages));
            }
            churn(format!("{round}.main"), round, threads, slots, shared, private, pages);
            for _ in 0..FORKS_PER_ROUND {
                fork_child(private, pages);
            }
            read_proc("maps");
            read_proc("smaps");
            read_proc("smaps_rollup");
            read_proc("numa_maps");
        });
        brk();
        unmap(private, pages);
        unmap(shared, pages);
    }

    let skips = SKIPS.lock().unwrap();
    let list = if skips.is_empty() {
        "none".to_string()
    } else {
        skips.iter().map(|(op, (n, _))| format!("{op}:{n}")).collect::<Vec<_>>().join(",")
    };
    if !skips.is_empty() {
        let why: Vec<_> = skips.iter().map(|(op, (_, e))| format!("{op}={}", errno_name(*e))).collect();
        eprintln!("vmalock-mix: tolerated errnos: {}", why.join(","));
    }
    println!("vmalock-mix: done rounds={iters} ops={} skipped={list}", OPS.load(Ordering::Relaxed));
}
