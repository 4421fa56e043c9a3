//! Decoded events: what the model consumes and what a trace file stores, one per line.
//!
//! A [`RawEvent`] from the ring buffer is decoded once into an [`Event`]; from then on live runs
//! and replays handle exactly the same values.

use serde::{Deserialize, Serialize};

pub use crate::comm::Comm;
pub use crate::nameset::NameSet;
use tracer_common::{RawEvent, fact, flag, kind, lock_class, site, snap, walk_lock};

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Event {
    /// CLOCK_MONOTONIC nanoseconds (`bpf_ktime_get_ns`).
    pub ts_ns: u64,
    pub cpu: u32,
    pub tid: u32,
    pub tgid: u32,
    pub comm: Comm,
    /// The task started after tracing began: every lock it holds was seen being taken.
    #[serde(default, skip_serializing_if = "is_false")]
    pub task_new: bool,
    /// `ts_ns` is at most one kernel tick early (never before the task's previous event): a
    /// default run kept this acquire in the kernel and sent it later (tracer-ebpf fold.rs).
    #[serde(default, skip_serializing_if = "is_false")]
    pub ts_coarse: bool,
    /// Events lost on this CPU just before this one (ring buffer full).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub lost_before: u32,
    /// Failed reserves on all CPUs before this event; a change means events were lost before
    /// this one, wherever they were lost.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub loss_epoch: u32,
    /// The kernel stack at the hook: an id whose frames a `stack` line gave earlier in the
    /// stream.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stack: Option<u32>,
    #[serde(flatten)]
    pub what: What,
}

/// Lock state read from kernel memory at the hook (tracer_common::fact bits), written in a
/// trace as the list of names of the bits set.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Facts(pub u32);

const FACT_NAMES: &[(u32, &str)] = &[
    (fact::MMAP_KNOWN, "mmap_known"),
    (fact::MMAP_LOCKED, "mmap_locked"),
    (fact::MMAP_WRITE_LOCKED, "mmap_write_locked"),
    (fact::MMAP_WRITER_IS_CURRENT, "mmap_writer_is_current"),
    (fact::VMA_KNOWN, "vma_known"),
    (fact::VMA_WRITE_LOCKED, "vma_write_locked"),
    (fact::VMA_SEQ_UNSET, "vma_seq_unset"),
    (fact::MM_SEQ_ODD, "mm_seq_odd"),
    (fact::MM_SEQCOUNT, "mm_seqcount"),
    (fact::VMA_READ_LOCKED, "vma_read_locked"),
    (fact::VMA_READ_KNOWN, "vma_read_known"),
    (fact::TASK_VMA_READ, "task_vma_read"),
    (fact::TRYLOCK, "trylock"),
];

impl Facts {
    pub fn has(self, bit: u32) -> bool {
        self.0 & bit != 0
    }
    /// Whether the mmap_lock state is known, and then whether the current task holds it for
    /// write (the rwsem's owner), and whether anyone holds it at all.
    pub fn mmap_known(self) -> bool {
        self.has(fact::MMAP_KNOWN)
    }
    pub fn vma_known(self) -> bool {
        self.has(fact::VMA_KNOWN)
    }
    pub fn names(self) -> Vec<&'static str> {
        FACT_NAMES.iter().filter(|(b, _)| self.has(*b)).map(|(_, n)| *n).collect()
    }
}

impl Serialize for Facts {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(FACT_NAMES.iter().filter(|(b, _)| self.has(*b)).map(|(_, n)| *n))
    }
}

impl<'de> Deserialize<'de> for Facts {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let names = Vec::<String>::deserialize(d)?;
        let mut bits = 0;
        for n in names {
            let (b, _) = FACT_NAMES
                .iter()
                .find(|(_, name)| *name == n)
                .ok_or_else(|| serde::de::Error::custom(format!("unknown fact {n:?}")))?;
            bits |= b;
        }
        Ok(Facts(bits))
    }
}


/// `enum page_walk_lock` (include/linux/pagewalk.h); the loader checks this kernel's BTF
/// enumerators against these before attaching the walk hooks.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum WalkLock {
    PgwalkRdlock,
    PgwalkWrlock,
    PgwalkWrlockVerify,
    PgwalkVmaRdlockVerify,
}

impl WalkLock {
    /// The enumerator names and values vmalock's walk rules are written against.
    pub const KERNEL_ENUM: &[(&str, u32)] = &[
        ("PGWALK_RDLOCK", walk_lock::RDLOCK as u32),
        ("PGWALK_WRLOCK", walk_lock::WRLOCK as u32),
        ("PGWALK_WRLOCK_VERIFY", walk_lock::WRLOCK_VERIFY as u32),
        ("PGWALK_VMA_RDLOCK_VERIFY", walk_lock::VMA_RDLOCK_VERIFY as u32),
    ];

    pub fn from_raw(v: u64) -> Option<WalkLock> {
        Some(match v {
            walk_lock::RDLOCK => WalkLock::PgwalkRdlock,
            walk_lock::WRLOCK => WalkLock::PgwalkWrlock,
            walk_lock::WRLOCK_VERIFY => WalkLock::PgwalkWrlockVerify,
            walk_lock::VMA_RDLOCK_VERIFY => WalkLock::PgwalkVmaRdlockVerify,
            _ => return None,
        })
    }

    pub fn name(self) -> &'static str {
        Self::KERNEL_ENUM[self as usize].0
    }
}

/// The lock classes the lock-order rule orders, as lockdep names them (mmap_lock and the VMA
/// lock come from their own events; the others from `LockAcquire`/`LockRelease`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LockClass {
    IRwsem,
    MmapLock,
    VmaLock,
    IMmapRwsem,
    AnonVma,
}

impl LockClass {
    pub fn name(self) -> &'static str {
        match self {
            LockClass::IRwsem => "i_rwsem",
            LockClass::MmapLock => "mmap_lock",
            LockClass::VmaLock => "vma_lock",
            LockClass::IMmapRwsem => "i_mmap_rwsem",
            LockClass::AnonVma => "anon_vma",
        }
    }

    /// The name mm/rmap.c's "Lock ordering in mm" gives it.
    pub fn documented_name(self) -> &'static str {
        match self {
            LockClass::IRwsem => "inode->i_rwsem",
            LockClass::MmapLock => "mm->mmap_lock",
            LockClass::VmaLock => "vma_start_write",
            LockClass::IMmapRwsem => "mapping->i_mmap_rwsem",
            LockClass::AnonVma => "anon_vma->rwsem",
        }
    }

    /// Position in mm/rmap.c's order: a lower rank is taken first.
    pub fn rank(self) -> u8 {
        self as u8
    }

    fn from_wire(c: u64) -> Option<LockClass> {
        Some(match c {
            lock_class::I_MMAP_RWSEM => LockClass::IMmapRwsem,
            lock_class::ANON_VMA => LockClass::AnonVma,
            lock_class::I_RWSEM => LockClass::IRwsem,
            _ => return None,
        })
    }
}

/// The function a page walk or a new VMA came from.
pub fn site_name(s: u64) -> &'static str {
    match s {
        site::WALK_PAGE_RANGE => "walk_page_range",
        site::WALK_PAGE_RANGE_MM => "walk_page_range_mm",
        site::WALK_PAGE_VMA => "walk_page_vma",
        site::WALK_PAGE_RANGE_VMA => "walk_page_range_vma",
        site::WALK_PAGE_MAPPING => "walk_page_mapping",
        site::WALK_PAGE_RANGE_MM_UNSAFE => "walk_page_range_mm_unsafe",
        site::WALK_PAGE_RANGE_VMA_UNSAFE => "walk_page_range_vma_unsafe",
        site::VMA_LINK => "vma_link",
        site::INSTALL_SPECIAL_MAPPING => "_install_special_mapping",
        site::KSM_ADD_VMA => "ksm_add_vma",
        site::MPROTECT_FIXUP => "mprotect_fixup",
        site::MLOCK_FIXUP => "mlock_fixup",
        site::MBIND_RANGE => "mbind_range",
        site::MADVISE_UPDATE_VMA => "madvise_update_vma",
        site::USERFAULTFD_REGISTER_RANGE => "userfaultfd_register_range",
        _ => "unknown",
    }
}

fn site_of(name: &str) -> Option<u64> {
    (0..64).find(|s| site_name(*s) == name)
}

/// Site names in a trace.
mod site_str {
    use serde::{Deserialize, Deserializer, Serializer, de::Error};

    pub fn serialize<S: Serializer>(v: &u64, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(super::site_name(*v))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
        let s = <&str>::deserialize(d)?;
        super::site_of(s).ok_or_else(|| D::Error::custom(format!("unknown site {s:?}")))
    }
}

/// What happened. Serialized flattened into the event line with a `kind` tag.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum What {
    /// `mmap_lock_start_locking`: about to take `mm`'s mmap_lock. `vma_read`: the per-VMA read
    /// lock this task holds meanwhile, if any.
    MmapLockStart {
        #[serde(with = "hex")]
        mm: u64,
        write: bool,
        #[serde(default, skip_serializing_if = "Option::is_none", with = "hex_opt")]
        vma_read: Option<u64>,
    },
    /// `mmap_lock_acquire_returned`: the attempt finished (`success` is false for a failed
    /// trylock or an interrupted killable lock).
    MmapLockAcquired {
        #[serde(with = "hex")]
        mm: u64,
        write: bool,
        success: bool,
        #[serde(default, skip_serializing_if = "Option::is_none", with = "hex_opt")]
        vma_read: Option<u64>,
        /// Under a per-VMA read lock: the attempt was a trylock (it cannot deadlock).
        #[serde(default, skip_serializing_if = "is_false")]
        trylock: bool,
    },
    /// `mmap_lock_released`.
    MmapLockReleased {
        #[serde(with = "hex")]
        mm: u64,
        write: bool,
    },
    /// `sched_process_exit`: this thread is exiting.
    TaskExit,
    /// `__vma_start_write(vma, …)` entry.
    VmaWriteLock {
        #[serde(with = "hex")]
        mm: u64,
        #[serde(with = "hex")]
        vma: u64,
        facts: Facts,
    },
    /// A page walk starts (`site`), declaring `walk_lock` (None: this kernel has none).
    PageWalk {
        #[serde(with = "hex")]
        mm: u64,
        #[serde(with = "hex")]
        vma: u64,
        walk_lock: Option<WalkLock>,
        #[serde(with = "site_str")]
        site: u64,
        facts: Facts,
    },
    /// The per-VMA step of a walk (`__walk_page_range`), after the walker locked the VMA.
    PageWalkVma {
        #[serde(with = "hex")]
        mm: u64,
        #[serde(with = "hex")]
        vma: u64,
        walk_lock: Option<WalkLock>,
        facts: Facts,
    },
    /// `vma_prepare(vp)`: `unlocked` names the members of `vp` that are not write-locked.
    VmaPrepare {
        #[serde(with = "hex")]
        mm: u64,
        #[serde(with = "hex")]
        vma: u64,
        #[serde(default = "no_roles", deserialize_with = "prepare_roles", skip_serializing_if = "NameSet::is_empty")]
        unlocked: NameSet,
        #[serde(with = "hex")]
        first_unlocked: u64,
        facts: Facts,
    },
    /// A new VMA was just inserted (`site`).
    VmaNew {
        #[serde(with = "hex")]
        mm: u64,
        #[serde(with = "hex")]
        vma: u64,
        #[serde(with = "site_str")]
        site: u64,
        facts: Facts,
    },
    /// A VMA snapshot that tells something (see tracer_common::kind::VMA_SNAPSHOT).
    VmaSnapshot {
        #[serde(with = "hex")]
        mm: u64,
        #[serde(with = "hex")]
        vma: u64,
        #[serde(with = "hex")]
        vm_start: u64,
        #[serde(deserialize_with = "snap_changes")]
        changes: NameSet,
        /// vm_flags bits that changed since the previous snapshot.
        #[serde(with = "hex")]
        flags_changed: u64,
        facts: Facts,
    },
    /// A VMA modifier (`site`) returned having changed `changes` of `vma`.
    VmaModified {
        #[serde(with = "hex")]
        mm: u64,
        #[serde(with = "hex")]
        vma: u64,
        #[serde(with = "site_str")]
        site: u64,
        #[serde(deserialize_with = "snap_changes")]
        changes: NameSet,
        #[serde(with = "hex")]
        flags_before: u64,
        #[serde(with = "hex")]
        flags_after: u64,
        facts: Facts,
    },
    /// A watched rwsem of `class` was taken (the lock function returned; `success` false for a
    /// failed trylock or interrupted killable wait). `vma_read`: the per-VMA read lock the task
    /// holds meanwhile.
    LockAcquire {
        class: LockClass,
        #[serde(with = "hex")]
        lock: u64,
        write: bool,
        #[serde(default, skip_serializing_if = "is_false")]
        trylock: bool,
        success: bool,
        #[serde(default, skip_serializing_if = "Option::is_none", with = "hex_opt")]
        vma_read: Option<u64>,
    },
    /// A watched rwsem of `class` is released.
    LockRelease {
        class: LockClass,
        #[serde(with = "hex")]
        lock: u64,
        write: bool,
    },
    /// Not a kernel event: the frames of kernel stack `id`, symbolized when it was first seen.
    Stack { id: u32, frames: Vec<String> },
    /// Not a kernel event: the kernel skipped `count` hook hits (BPF recursion protection, when
    /// a task was preempted inside one of our programs) somewhere within the next `span` events.
    /// Written by the live run into the stream so a replay is blind over the same stretch.
    Missed {
        count: u64,
        #[serde(default)]
        span: u64,
    },
}

/// `VmaPrepare::unlocked` names, by tracer_common::prepare_role bit.
pub const PREPARE_ROLES: &[(u64, &str)] = &[
    (tracer_common::prepare_role::VMA, "vma"),
    (tracer_common::prepare_role::ADJ_NEXT, "adj_next"),
    (tracer_common::prepare_role::REMOVE, "remove"),
    (tracer_common::prepare_role::REMOVE2, "remove2"),
];

/// `VmaSnapshot::changes` names, by tracer_common::snap bit.
pub const SNAP_CHANGES: &[(u64, &str)] = &[
    (snap::NEW, "new"),
    (snap::FLAGS_CHANGED, "vm_flags"),
    (snap::PAGE_PROT_CHANGED, "vm_page_prot"),
    (snap::UFFD_CHANGED, "vm_userfaultfd_ctx"),
    (snap::POLICY_CHANGED, "vm_policy"),
    (snap::LOCK_SEQ_MOVED, "vm_lock_seq"),
    (snap::MM_SEEN_BEFORE, "mm_seen_before"),
];

fn no_roles() -> NameSet {
    NameSet::empty(PREPARE_ROLES)
}

fn prepare_roles<'de, D: serde::Deserializer<'de>>(d: D) -> Result<NameSet, D::Error> {
    crate::nameset::deserialize(d, PREPARE_ROLES)
}

fn snap_changes<'de, D: serde::Deserializer<'de>>(d: D) -> Result<NameSet, D::Error> {
    crate::nameset::deserialize(d, SNAP_CHANGES)
}

/// Optional kernel pointers, as `hex`.
mod hex_opt {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(v: &Option<u64>, s: S) -> Result<S::Ok, S::Error> {
        match v {
            Some(v) => super::hex::serialize(v, s),
            None => s.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
        #[derive(Deserialize)]
        struct W(#[serde(with = "super::hex")] u64);
        Ok(Option::<W>::deserialize(d)?.map(|w| w.0))
    }
}

fn is_false(b: &bool) -> bool {
    !*b
}
fn is_zero(n: &u32) -> bool {
    *n == 0
}

/// Kernel pointers as `"0xffff..."` strings: readable, and exact in every JSON reader
/// (a u64 above 2^53 is not).
pub mod hex {
    use serde::{Deserialize, Deserializer, Serializer, de::Error};

    /// Written from a buffer on the stack: a trace line has several pointers, and a String
    /// each was most of the allocations of writing one.
    pub fn serialize<S: Serializer>(v: &u64, s: S) -> Result<S::Ok, S::Error> {
        let mut buf = [0u8; 18];
        s.serialize_str(format(*v, &mut buf))
    }

    /// `v` as `0x` and lowercase hex digits, without leading zeros (as `{:#x}`).
    pub fn format(v: u64, buf: &mut [u8; 18]) -> &str {
        const DIGITS: &[u8; 16] = b"0123456789abcdef";
        let mut i = buf.len();
        let mut n = v;
        loop {
            i -= 1;
            buf[i] = DIGITS[(n & 0xf) as usize];
            n >>= 4;
            if n == 0 {
                break;
            }
        }
        i -= 2;
        buf[i] = b'0';
        buf[i + 1] = b'x';
        // SAFETY: only ASCII was written to buf[i..].
        unsafe { std::str::from_utf8_unchecked(&buf[i..]) }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
        let s = <&str>::deserialize(d)?;
        let digits = s
            .strip_prefix("0x")
            .ok_or_else(|| D::Error::custom(format!("expected a 0x-prefixed hex pointer, got {s:?}")))?;
        u64::from_str_radix(digits, 16).map_err(|e| D::Error::custom(format!("bad hex pointer {s:?}: {e}")))
    }
}

/// Why a ring-buffer record could not be decoded.
#[derive(Debug, PartialEq, Eq)]
pub enum DecodeError {
    Short(usize),
    UnknownKind(u16),
    UnknownClass(u64),
}

impl std::fmt::Display for DecodeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DecodeError::Short(n) => write!(
                f,
                "ring-buffer record of {n} bytes is shorter than a RawEvent ({} bytes): \
                 the eBPF object and this binary were built from different sources",
                std::mem::size_of::<RawEvent>()
            ),
            DecodeError::UnknownKind(k) => write!(f, "ring-buffer record has unknown kind {k}"),
            DecodeError::UnknownClass(c) => write!(
                f,
                "ring-buffer lock event has unknown lock class {c}: the eBPF object and this binary were built from different sources"
            ),
        }
    }
}

impl std::error::Error for DecodeError {}

impl Event {
    /// The marker for `count` hook hits the kernel skipped somewhere in the next `span` events.
    pub fn missed(count: u64, span: u64, after: Option<&Event>) -> Event {
        Event {
            ts_ns: after.map_or(0, |e| e.ts_ns),
            cpu: 0,
            tid: 0,
            tgid: 0,
            comm: Comm::default(),
            task_new: false,
            ts_coarse: false,
            lost_before: 0,
            loss_epoch: after.map_or(0, |e| e.loss_epoch),
            stack: None,
            what: What::Missed { count, span },
        }
    }

    /// The `stack` line that gives stack `id`'s frames, placed before the first event naming it.
    pub fn stack_frames(id: u32, frames: Vec<String>, before: &Event) -> Event {
        Event {
            ts_ns: before.ts_ns,
            cpu: before.cpu,
            tid: 0,
            tgid: 0,
            comm: Comm::default(),
            task_new: false,
            ts_coarse: false,
            lost_before: 0,
            loss_epoch: before.loss_epoch,
            stack: None,
            what: What::Stack { id, frames },
        }
    }

    /// Decodes one ring-buffer record.
    pub fn decode(bytes: &[u8]) -> Result<Event, DecodeError> {
        if bytes.len() < std::mem::size_of::<RawEvent>() {
            return Err(DecodeError::Short(bytes.len()));
        }
        // SAFETY: RawEvent is repr(C) plain old data and `bytes` is long enough; the read is
        // unaligned because the ring buffer only guarantees 8-byte alignment of the record.
        let raw: RawEvent = unsafe { std::ptr::read_unaligned(bytes.as_ptr().cast()) };
        Event::from_raw(&raw)
    }

    pub fn from_raw(raw: &RawEvent) -> Result<Event, DecodeError> {
        let write = raw.flags & flag::WRITE != 0;
        let facts = Facts(raw.facts);
        let (mm, vma) = (raw.mm, raw.vma);
        let vma_read = facts.has(fact::TASK_VMA_READ).then_some(vma);
        let walk_lock = WalkLock::from_raw(raw.args[0]);
        let what = match raw.kind {
            kind::MMAP_START => What::MmapLockStart { mm, write, vma_read },
            kind::MMAP_ACQUIRED => What::MmapLockAcquired {
                mm,
                write,
                success: raw.flags & flag::SUCCESS != 0,
                vma_read,
                trylock: facts.has(fact::TRYLOCK),
            },
            kind::MMAP_RELEASED => What::MmapLockReleased { mm, write },
            kind::TASK_EXIT => What::TaskExit,
            kind::VMA_WRITE_LOCK => What::VmaWriteLock { mm, vma, facts },
            kind::PAGEWALK => What::PageWalk { mm, vma, walk_lock, site: raw.args[1], facts },
            kind::PAGEWALK_VMA => What::PageWalkVma { mm, vma, walk_lock, facts },
            kind::VMA_PREPARE => What::VmaPrepare {
                mm,
                vma,
                unlocked: NameSet::from_bits(raw.args[0], PREPARE_ROLES),
                first_unlocked: raw.args[1],
                facts,
            },
            kind::VMA_NEW => What::VmaNew { mm, vma, site: raw.args[0], facts },
            kind::VMA_MODIFIED => What::VmaModified {
                mm,
                vma,
                site: raw.args[2] & 0xffff,
                changes: NameSet::from_bits(raw.args[2] >> 16, SNAP_CHANGES),
                flags_before: raw.args[0],
                flags_after: raw.args[1],
                facts,
            },
            kind::VMA_SNAPSHOT => What::VmaSnapshot {
                mm,
                vma,
                vm_start: raw.args[0],
                changes: NameSet::from_bits(raw.args[1], SNAP_CHANGES),
                flags_changed: raw.args[2],
                facts,
            },
            kind::LOCK_ACQUIRE | kind::LOCK_RELEASE => {
                let class = LockClass::from_wire(raw.args[1]).ok_or(DecodeError::UnknownClass(raw.args[1]))?;
                let lock = raw.args[0];
                if raw.kind == kind::LOCK_RELEASE {
                    What::LockRelease { class, lock, write }
                } else {
                    What::LockAcquire {
                        class,
                        lock,
                        write,
                        trylock: facts.has(fact::TRYLOCK),
                        success: raw.flags & flag::SUCCESS != 0,
                        vma_read,
                    }
                }
            }
            k => return Err(DecodeError::UnknownKind(k)),
        };
        Ok(Event {
            ts_ns: raw.ts_ns,
            cpu: raw.cpu,
            tid: raw.tid,
            tgid: raw.tgid,
            comm: Comm::from_kernel(&raw.comm),
            task_new: raw.flags & flag::TASK_NEW != 0,
            ts_coarse: raw.flags & flag::TS_COARSE != 0,
            lost_before: raw.lost_before,
            loss_epoch: raw.loss_epoch,
            stack: u32::try_from(raw.stack_id).ok(),
            what,
        })
    }

    /// The event kind's wire number, for per-kind counters.
    pub fn kind(&self) -> u16 {
        match self.what {
            What::MmapLockStart { .. } => kind::MMAP_START,
            What::MmapLockAcquired { .. } => kind::MMAP_ACQUIRED,
            What::MmapLockReleased { .. } => kind::MMAP_RELEASED,
            What::TaskExit => kind::TASK_EXIT,
            What::Missed { .. } => kind::MISSED,
            What::Stack { .. } => KIND_STACK,
            What::VmaWriteLock { .. } => kind::VMA_WRITE_LOCK,
            What::PageWalk { .. } => kind::PAGEWALK,
            What::PageWalkVma { .. } => kind::PAGEWALK_VMA,
            What::VmaPrepare { .. } => kind::VMA_PREPARE,
            What::VmaNew { .. } => kind::VMA_NEW,
            What::VmaSnapshot { .. } => kind::VMA_SNAPSHOT,
            What::VmaModified { .. } => kind::VMA_MODIFIED,
            What::LockAcquire { .. } => kind::LOCK_ACQUIRE,
            What::LockRelease { .. } => kind::LOCK_RELEASE,
        }
    }
}

/// Userspace-only pseudo-kind of `What::Stack` lines (never on the wire).
pub const KIND_STACK: u16 = 100;

/// Human name of a wire kind, for summaries.
pub fn kind_name(k: u16) -> &'static str {
    match k {
        kind::MMAP_START => "mmap_lock_start_locking",
        kind::MMAP_ACQUIRED => "mmap_lock_acquire_returned",
        kind::MMAP_RELEASED => "mmap_lock_released",
        kind::TASK_EXIT => "sched_process_exit",
        kind::MISSED => "missed (recursion protection)",
        KIND_STACK => "stack (symbolized frames)",
        kind::VMA_WRITE_LOCK => "vma_start_write",
        kind::PAGEWALK => "page_walk",
        kind::PAGEWALK_VMA => "page_walk_vma_step",
        kind::VMA_PREPARE => "vma_prepare",
        kind::VMA_NEW => "vma_new",
        kind::VMA_SNAPSHOT => "vma_snapshot",
        kind::VMA_MODIFIED => "vma_modified",
        kind::LOCK_ACQUIRE => "lock_acquire",
        kind::LOCK_RELEASE => "lock_release",
        _ => "unknown",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_pointers_are_written_as_format_writes_them() {
        for v in [0u64, 1, 0xf, 0x10, 0xffff_8880_0123_4000, u64::MAX] {
            let mut buf = [0; 18];
            assert_eq!(hex::format(v, &mut buf), format!("{v:#x}"));
        }
    }

    fn raw(kind: u16, flags: u16) -> RawEvent {
        let mut comm = [0u8; 16];
        comm[..4].copy_from_slice(b"work");
        RawEvent { ts_ns: 5, mm: 0xffff_8880_0123_4000, tid: 11, tgid: 10, cpu: 1, kind, flags, comm, ..Default::default() }
    }

    #[test]
    fn decodes_each_kind_and_flag() {
        let e = Event::from_raw(&raw(kind::MMAP_ACQUIRED, flag::WRITE | flag::TASK_NEW)).unwrap();
        assert_eq!(e.what, What::MmapLockAcquired { mm: 0xffff_8880_0123_4000, write: true, success: false, vma_read: None, trylock: false });
        assert!(e.task_new);
        assert_eq!(e.comm, "work");
        assert_eq!(Event::from_raw(&raw(kind::MMAP_RELEASED, 0)).unwrap().what, What::MmapLockReleased { mm: 0xffff_8880_0123_4000, write: false });
        assert_eq!(Event::from_raw(&raw(kind::TASK_EXIT, 0)).unwrap().what, What::TaskExit);
        assert_eq!(Event::from_raw(&raw(99, 0)), Err(DecodeError::UnknownKind(99)));
        assert_eq!(Event::decode(&[0u8; 10]), Err(DecodeError::Short(10)));
    }

    #[test]
    fn decodes_lock_events_and_refuses_unknown_classes() {
        let mut r = raw(kind::LOCK_ACQUIRE, flag::WRITE | flag::SUCCESS);
        r.args = [0xffff_8880_1111_0040, lock_class::I_MMAP_RWSEM, 0];
        r.facts = fact::TRYLOCK | fact::TASK_VMA_READ;
        r.vma = 0xffff_8880_0bad_0000;
        let e = Event::from_raw(&r).unwrap();
        assert_eq!(
            e.what,
            What::LockAcquire { class: LockClass::IMmapRwsem, lock: 0xffff_8880_1111_0040, write: true, trylock: true, success: true, vma_read: Some(0xffff_8880_0bad_0000) }
        );
        let line = serde_json::to_string(&e).unwrap();
        assert!(line.contains(r#""kind":"lock_acquire","class":"i_mmap_rwsem","lock":"0xffff888011110040""#), "{line}");
        assert_eq!(serde_json::from_str::<Event>(&line).unwrap(), e);
        let mut r = raw(kind::LOCK_RELEASE, 0);
        r.args = [0x1000, lock_class::ANON_VMA, 0];
        assert_eq!(Event::from_raw(&r).unwrap().what, What::LockRelease { class: LockClass::AnonVma, lock: 0x1000, write: false });
        r.args[1] = 77;
        assert_eq!(Event::from_raw(&r), Err(DecodeError::UnknownClass(77)));
    }

    #[test]
    fn json_round_trip_keeps_pointers_exact() {
        let e = Event::from_raw(&raw(kind::MMAP_START, flag::WRITE)).unwrap();
        let line = serde_json::to_string(&e).unwrap();
        assert!(line.contains(r#""mm":"0xffff888001234000""#), "{line}");
        assert!(line.contains(r#""kind":"mmap_lock_start""#), "{line}");
        assert_eq!(serde_json::from_str::<Event>(&line).unwrap(), e);
    }
}
