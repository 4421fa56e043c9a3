//! The `lock-order` rule: lockdep's dependency graph, for the mm lock classes vmalock can see.
//!
//! Each task keeps a stack of the locks it holds. Taking lock B while holding A adds the edge
//! A→B (between lock *classes*, as lockdep does) the first time that pair is seen, with the two
//! acquiring events (task, time, kernel stacks). A new edge is checked two ways:
//!
//! * against the documented order at the top of mm/rmap.c ("Lock ordering in mm"): an edge
//!   that runs against it is reported at once, before any cycle closes;
//! * for a cycle through the graph, with lockdep's strong-path rule (kernel/locking/lockdep.c,
//!   `__calc_dep_bit` and `__bfs`): every edge carries the dependency types it was seen with —
//!   E/S (the held lock was taken for write / for read) × R/N (the new one is a recursive read /
//!   anything else) — and a path is a deadlock only if no `-(?R)->` edge is followed by a
//!   `-(S?)->` edge. A recursive reader never waits for another reader, so a cycle made only of
//!   read-read steps cannot deadlock. rwsem readers are *not* recursive (rwsem_acquire_read is
//!   lock_acquire_shared, read = 1): rwsems are writer-fair, so a reader queues behind a waiting
//!   writer, and a read-read cycle deadlocks as soon as a writer waits on one of its locks.
//!   Every class here is an rwsem, so on a real kernel only recursive-read acquisitions (none of
//!   the mm locks) escape; the model still implements the rule so it stays lockdep's.
//!
//! Trylocks cannot wait, so they add no edge into the lock taken (locks taken while a trylock
//! is held still get edges from it), as in lockdep's check_prevs_add.
//!
//! Same class, different lock (two mms' mmap_locks: dup_mmap takes the child's with
//! `mmap_write_lock_nested(mm, SINGLE_DEPTH_NESTING)` while holding the parent's): lockdep
//! tells nested instances apart by the subclass the caller annotates. The tracepoints do not
//! carry the annotation, so the subclass here is the nesting depth: the n-th lock of a class a
//! task holds at once is `class/n` (capped at lockdep's 8 subclasses). Nesting two mms is then
//! the legal edge mmap_lock → mmap_lock/1; it closes a cycle only if something orders
//! mmap_lock/1 back before mmap_lock, e.g. another lock taken under the nested one and before
//! the outer one elsewhere.
//!
//! The VMA write lock (vma_start_write) waits for the VMA's readers and then holds nothing a
//! reader could wait on (lock_vma_under_rcu only trylocks and falls back to mmap_lock), so it is
//! an acquire-and-release, as lockdep models it (`__vma_enter_locked` / `__vma_exit_locked`).
//! The per-VMA read lock is a trylock held until vma_end_read; vmalock learns it is held only
//! from the events taken under it (`vma_read`).
//!
//! mmap_write_downgrade turns the write hold into a read hold in place (lockdep's
//! lock_downgrade): later locks get S-type edges from it.
//!
//! A chain hash of (held stack, new lock) remembers stacks already validated, so a repeated
//! pattern costs one lookup.

use std::collections::{HashMap, HashSet, VecDeque};
use std::fmt;
use std::hash::{DefaultHasher, Hash, Hasher};

use serde::Serialize;

use super::fasthash::FastMap;
use super::rules::{LOCK_ORDER, NO_MMAP_UNDER_VMA_READ};
use super::verdict::{TaskRef, Verdict};
use crate::event::{Event, LockClass, What};

/// lockdep's MAX_LOCKDEP_SUBCLASSES: deeper same-class nesting shares the last subclass.
const MAX_SUBCLASS: u8 = 7;
/// How many emptied held-lock stacks are kept for reuse.
const SPARE_STACKS: usize = 256;
/// Locks one task can hold at once (lockdep's MAX_LOCK_DEPTH); deeper acquisitions are not
/// tracked (counted in `LockOrder::too_deep`).
const MAX_HELD: usize = 48;

/// The text of the documented order vmalock cites (mm/rmap.c, "Lock ordering in mm").
pub const DOCUMENTED_ORDER: &str = "mm/rmap.c \"Lock ordering in mm\": inode->i_rwsem -> mm->mmap_lock -> \
    mapping->invalidate_lock -> folio_lock -> hugetlbfs_i_mmap_rwsem_key -> vma_start_write -> \
    mapping->i_mmap_rwsem -> anon_vma->rwsem -> mm->page_table_lock or pte_lock";

/// A node of the graph: a lock class and the nesting subclass.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Key {
    pub class: LockClass,
    pub sub: u8,
}

impl fmt::Display for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.sub == 0 { write!(f, "{}", self.class.name()) } else { write!(f, "{}/{}", self.class.name(), self.sub) }
    }
}

impl Serialize for Key {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// How a lock is taken, as lockdep's `read` argument: 0 write, 1 read, 2 recursive read.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Take {
    Write,
    Read,
    RecursiveRead,
}

impl Take {
    pub fn of(write: bool) -> Take {
        if write { Take::Write } else { Take::Read }
    }
    fn name(self) -> &'static str {
        match self {
            Take::Write => "write",
            Take::Read => "read",
            Take::RecursiveRead => "recursive read",
        }
    }
}

/// Dependency types (lockdep's bit order): index = (held is Exclusive) + (new is Non-recursive) << 1.
const DEP_NAMES: [&str; 4] = ["SR", "ER", "SN", "EN"];

fn dep_bit(held: Take, new: Take) -> u8 {
    let e = (held == Take::Write) as u8;
    let n = (new != Take::RecursiveRead) as u8;
    1 << (e + (n << 1))
}

fn dep_names(deps: u8) -> Vec<&'static str> {
    (0..4).filter(|i| deps & (1 << i) != 0).map(|i| DEP_NAMES[i]).collect()
}

/// One lock a task holds.
#[derive(Clone, Debug)]
struct Held {
    key: Key,
    addr: u64,
    take: Take,
    /// Re-acquisitions of the same lock (nested reads of one mmap_lock).
    count: u32,
    /// The event that took it: the "from" side of edges out of it.
    ev: Event,
}

/// The first sighting of an edge: who held what while taking what.
#[derive(Clone, Debug, Serialize)]
pub struct Witness {
    pub task: TaskRef,
    pub ts_ns: u64,
    /// The acquisition of the held lock and of the new one.
    pub held: Event,
    pub taken: Event,
}

#[derive(Clone, Debug)]
pub struct Edge {
    pub from: Key,
    pub to: Key,
    /// Dependency type bits (`DEP_NAMES`) seen so far.
    pub deps: u8,
    pub witness: Witness,
}

impl Edge {
    /// Whether the edge runs against the documented order (same-class edges never do).
    pub fn inverted(&self) -> bool {
        self.from.class.rank() > self.to.class.rank()
    }
}

/// A reported cycle: the edges (indices into the graph) in path order, closing back.
#[derive(Clone, Debug)]
pub struct Cycle {
    pub edges: Vec<usize>,
    /// The rule it was reported under (lock-order, or no-mmap-under-vma-read when that rule
    /// already reported its only inverted edge).
    pub reported_as: &'static str,
}

/// One edge of a verdict's chain, for humans and JSON (stacks filled in by the Model).
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ChainLink {
    pub from: String,
    pub to: String,
    pub deps: Vec<&'static str>,
    pub task: TaskRef,
    pub ts_ns: u64,
    pub held_take: &'static str,
    pub taken_take: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub held_stack_id: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub taken_stack_id: Option<u32>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub held_stack: Vec<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub taken_stack: Vec<String>,
    /// The documented order this edge contradicts, if it does.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub contradicts: Option<String>,
}

#[derive(Debug, Default)]
pub(crate) struct LockOrder {
    tasks: FastMap<u32, Vec<Held>>,
    /// Emptied `tasks` stacks, kept for the next task to take a lock: a task takes and drops
    /// its locks over and over, and a new Vec each time was an allocation per hold.
    spare: Vec<Vec<Held>>,
    /// mmap_lock attempts started but not returned, by task: (mm, write, edges already added).
    pending: FastMap<u32, (u64, bool, bool)>,
    edges: Vec<Edge>,
    index: FastMap<(Key, Key), usize>,
    out_edges: FastMap<Key, Vec<usize>>,
    /// Held-lock chains validated (hash of held keys and the new one), each with whether the
    /// acquisition that validated it had a stack: a chain first seen without one takes the
    /// first stack of a later acquisition along it (the eBPF side walks the stack of only some
    /// legal VMA write locks: `witness_stack_id`).
    chains: FastMap<u64, bool>,
    pub(crate) chain_hits: u64,
    pub(crate) too_deep: u64,
    cycles: Vec<Cycle>,
    reported: HashSet<Vec<Key>>,
    /// The last `Event::loss_epoch` seen: a change means events were lost, releases among them.
    loss_epoch: u32,
    /// Inside a stretch where the kernel skipped hook hits (`What::Missed`): a skipped release
    /// leaves a lock held in the model that the task no longer holds, and every lock taken
    /// after it would seem taken under it. Locks are still followed there, but no dependency
    /// is learned: an edge learned then would outlive the stretch and close a false cycle
    /// later (on 7.2, a skipped `up_write(anon_vma)` gave anon_vma -> mmap_lock, and then
    /// "vma_lock -> anon_vma -> mmap_lock -> vma_lock").
    blind: bool,
}

impl LockOrder {
    /// The locks of classes other than mmap_lock each task holds now, as "class mode" names
    /// (the mmap_lock side is `Model::held`).
    pub(crate) fn held_other(&self) -> impl Iterator<Item = (TaskRef, Vec<String>)> + '_ {
        self.tasks.values().filter_map(|h| {
            let names: Vec<String> = h
                .iter()
                .filter(|x| x.key.class != LockClass::MmapLock)
                .map(|x| format!("{} {:#x} {}", x.key, x.addr, x.take.name()))
                .collect();
            let first = h.iter().find(|x| x.key.class != LockClass::MmapLock)?;
            Some((TaskRef::from(&first.ev), names))
        })
    }

    /// Every edge learned so far, in the order first seen.
    pub(crate) fn edges(&self) -> &[Edge] {
        &self.edges
    }

    /// See `blind`: set by the model for each event of a stretch with skipped hook hits.
    pub(crate) fn set_blind(&mut self, blind: bool) {
        self.blind = blind;
    }

    pub(crate) fn forget(&mut self) {
        // Held locks may have been released unseen; the edges already learned stay true.
        self.tasks.clear();
        self.pending.clear();
    }

    pub(crate) fn apply(&mut self, ev: &Event, out: &mut Vec<Verdict>) {
        if ev.loss_epoch != self.loss_epoch || ev.lost_before > 0 {
            // A lost release would leave a lock held forever and invent edges from it.
            self.loss_epoch = ev.loss_epoch;
            self.forget();
        }
        let tid = ev.tid;
        match &ev.what {
            What::MmapLockStart { mm, write, vma_read } => {
                // Under a per-VMA read lock only the return tells a trylock apart: wait for it.
                let now = vma_read.is_none();
                if now {
                    self.acquire(ev, LockClass::MmapLock, *mm, Take::of(*write), None, out);
                }
                self.pending.insert(tid, (*mm, *write, now));
            }
            What::MmapLockAcquired { mm, write, success, vma_read, trylock } => {
                let pending = self.pending.remove(&tid).filter(|p| p.0 == *mm && p.1 == *write);
                if pending.is_none() && !*write && *success && self.holds(tid, LockClass::MmapLock, *mm) == Some(Take::Write) {
                    // mmap_write_downgrade traces acquire_returned(read) with no start.
                    self.downgrade(tid, LockClass::MmapLock, *mm);
                    return;
                }
                if pending.is_some_and(|p| !p.2) && !*trylock {
                    self.acquire(ev, LockClass::MmapLock, *mm, Take::of(*write), *vma_read, out);
                }
                if *success {
                    self.push(ev, LockClass::MmapLock, *mm, Take::of(*write));
                }
            }
            What::MmapLockReleased { mm, .. } => self.release(tid, LockClass::MmapLock, *mm),
            What::VmaWriteLock { vma, .. } => {
                self.acquire(ev, LockClass::VmaLock, *vma, Take::Write, None, out);
            }
            What::LockAcquire { class, lock, write, trylock, success, vma_read } => {
                if !*trylock {
                    self.acquire(ev, *class, *lock, Take::of(*write), *vma_read, out);
                }
                if *success {
                    self.push(ev, *class, *lock, Take::of(*write));
                }
            }
            What::LockRelease { class, lock, .. } => self.release(tid, *class, *lock),
            What::TaskExit => {
                self.tasks.remove(&tid);
                self.pending.remove(&tid);
            }
            _ => {}
        }
    }

    fn holds(&self, tid: u32, class: LockClass, addr: u64) -> Option<Take> {
        self.tasks.get(&tid)?.iter().rev().find(|h| h.key.class == class && h.addr == addr).map(|h| h.take)
    }

    /// One deeper than the deepest lock of `class` held (another lock of it), 0 if none: a
    /// nested lock never shares a key with one held, whatever was released in between.
    fn subclass<'a>(held: impl Iterator<Item = &'a Held>, class: LockClass, addr: u64) -> u8 {
        held.filter(|h| h.key.class == class && h.addr != addr).map(|h| h.key.sub + 1).max().unwrap_or(0).min(MAX_SUBCLASS)
    }

    /// Records the dependencies of taking (`class`, `addr`) as `take` on everything the task
    /// holds (plus the per-VMA read lock `vma_read`, which the stream only names here).
    fn acquire(&mut self, ev: &Event, class: LockClass, addr: u64, take: Take, vma_read: Option<u64>, out: &mut Vec<Verdict>) {
        if self.blind {
            return;
        }
        // A trylock held since lock_vma_under_rcu, so only ever a "from" side.
        let vma_held = vma_read.map(|v| Held { key: Key { class: LockClass::VmaLock, sub: 0 }, addr: v, take: Take::Read, count: 1, ev: ev.clone() });
        let task = self.tasks.get(&ev.tid).map_or(&[][..], Vec::as_slice);
        // What the task holds, oldest first. Walked in place: almost every acquisition matches
        // a chain already validated, and that path allocates nothing.
        let held = || vma_held.iter().chain(task);
        if held().any(|h| h.key.class == class && h.addr == addr) {
            return; // re-taking a lock it holds: mmap-lock-balance's business, no new order
        }
        let key = Key { class, sub: Self::subclass(held(), class, addr) };
        let mut h = DefaultHasher::new();
        for x in held() {
            (x.key, x.take).hash(&mut h);
        }
        (key, take).hash(&mut h);
        let has_stack = ev.stack.is_some();
        let stackless_hit = match self.chains.get_mut(&h.finish()) {
            Some(had_stack) => {
                self.chain_hits += 1;
                if *had_stack || !has_stack {
                    return;
                }
                *had_stack = true;
                true
            }
            None => {
                self.chains.insert(h.finish(), has_stack);
                false
            }
        };
        let held: Vec<Held> = held().cloned().collect();
        let mut seen = HashSet::new();
        for x in held.iter().rev() {
            if x.key == key || !seen.insert(x.key) {
                // Past the deepest subclass, or an older lock of the same key: nothing new.
                continue;
            }
            if stackless_hit {
                self.give_stack(x, key, ev);
            } else {
                self.add_edge(x, key, take, ev, out);
            }
        }
    }

    /// The edge `held` -> `to`, if its witness's taken side has no stack, is witnessed by `ev`
    /// (which has one) instead: the same order, seen again with the stack a report prints.
    fn give_stack(&mut self, held: &Held, to: Key, ev: &Event) {
        if let Some(&i) = self.index.get(&(held.key, to)) {
            let e = &mut self.edges[i];
            if e.witness.taken.stack.is_none() && ev.stack.is_some() {
                e.witness = Witness { task: TaskRef::from(ev), ts_ns: ev.ts_ns, held: held.ev.clone(), taken: ev.clone() };
            }
        }
    }

    fn push(&mut self, ev: &Event, class: LockClass, addr: u64, take: Take) {
        let spare = &mut self.spare;
        let stack = self.tasks.entry(ev.tid).or_insert_with(|| spare.pop().unwrap_or_default());
        if let Some(h) = stack.iter_mut().rev().find(|h| h.key.class == class && h.addr == addr) {
            h.count += 1;
            return;
        }
        if stack.len() >= MAX_HELD {
            self.too_deep += 1;
            return;
        }
        let key = Key { class, sub: Self::subclass(stack.iter(), class, addr) };
        stack.push(Held { key, addr, take, count: 1, ev: ev.clone() });
    }

    fn release(&mut self, tid: u32, class: LockClass, addr: u64) {
        let Some(stack) = self.tasks.get_mut(&tid) else { return };
        // A rwsem's class comes from the address map the eBPF side learns from VMAs, and a
        // recycled address can be relearned as another class between a lock and its unlock
        // (on 7.2 an i_mmap_rwsem was taken as "anon_vma", and that hold outlived its unlock).
        // The address is the lock: a release of a rwsem this task holds under another class
        // is still its release, or the hold would outlive it and every later lock would seem
        // taken under it. (mmap_lock is keyed by its mm, never by an rwsem address.)
        let same = |h: &Held| h.addr == addr && (h.key.class == class || (class != LockClass::MmapLock && h.key.class != LockClass::MmapLock));
        let found = stack.iter().rposition(|h| h.key.class == class && h.addr == addr).or_else(|| stack.iter().rposition(same));
        if let Some(i) = found {
            stack[i].count -= 1;
            if stack[i].count == 0 {
                stack.remove(i);
            }
        }
        if stack.is_empty()
            && let Some(empty) = self.tasks.remove(&tid)
            && self.spare.len() < SPARE_STACKS
        {
            self.spare.push(empty);
        }
    }

    fn downgrade(&mut self, tid: u32, class: LockClass, addr: u64) {
        if let Some(h) = self.tasks.get_mut(&tid).and_then(|s| s.iter_mut().rev().find(|h| h.key.class == class && h.addr == addr)) {
            h.take = Take::Read;
        }
    }

    fn add_edge(&mut self, held: &Held, to: Key, take: Take, ev: &Event, out: &mut Vec<Verdict>) {
        let from = held.key;
        let bit = dep_bit(held.take, take);
        let i = match self.index.get(&(from, to)) {
            Some(&i) if self.edges[i].deps & bit != 0 => return self.give_stack(held, to, ev),
            Some(&i) => {
                self.edges[i].deps |= bit;
                i
            }
            None => {
                let i = self.edges.len();
                let witness = Witness { task: TaskRef::from(ev), ts_ns: ev.ts_ns, held: held.ev.clone(), taken: ev.clone() };
                self.edges.push(Edge { from, to, deps: bit, witness });
                self.index.insert((from, to), i);
                self.out_edges.entry(from).or_default().push(i);
                if self.edges[i].inverted() && !Self::is_vma_read_case(&self.edges[i]) {
                    out.push(self.inversion_verdict(i, ev));
                }
                i
            }
        };
        self.check_cycle(i, bit, ev, out);
    }

    /// A per-VMA read lock held while taking mmap_lock: no-mmap-under-vma-read reports it.
    fn is_vma_read_case(e: &Edge) -> bool {
        e.from.class == LockClass::VmaLock && e.to.class == LockClass::MmapLock
    }

    fn inversion_verdict(&self, i: usize, ev: &Event) -> Verdict {
        let e = &self.edges[i];
        let what = format!(
            "{} taken for {} while holding {} (held for {}): {}",
            e.to,
            take_of(&e.witness.taken).name(),
            e.from,
            take_of(&e.witness.held).name(),
            contradiction(e.from.class, e.to.class)
        );
        let mut v = Verdict::new(LOCK_ORDER, what, ev, mm_of(ev), vec![e.witness.held.clone(), e.witness.taken.clone()]);
        v.chain = vec![self.link(i)];
        v
    }

    /// Looks for a strong path back from `to` to `from` of edge `i` (type `bit` just added).
    fn check_cycle(&mut self, i: usize, bit: u8, ev: &Event, out: &mut Vec<Verdict>) {
        let (from, to) = (self.edges[i].from, self.edges[i].to);
        let new_recursive = bit & 0b0011 != 0; // SR or ER: the new lock is a recursive read
        let new_from_shared = bit & 0b0101 != 0; // SR or SN
        let Some((path, arrived_r)) = self.strong_path(to, from, new_recursive) else { return };
        if arrived_r && new_from_shared {
            return; // -(?R)-> then -(S?)->: a recursive reader never waits on a reader
        }
        let mut edges = path;
        edges.push(i);
        let mut keys: Vec<Key> = edges.iter().map(|&e| self.edges[e].from).collect();
        keys.sort();
        if !self.reported.insert(keys) {
            return;
        }
        let inverted: Vec<usize> = edges.iter().copied().filter(|&e| self.edges[e].inverted()).collect();
        let only_vma_read = !inverted.is_empty() && inverted.iter().all(|&e| Self::is_vma_read_case(&self.edges[e]));
        let reported_as = if only_vma_read { NO_MMAP_UNDER_VMA_READ } else { LOCK_ORDER };
        self.cycles.push(Cycle { edges: edges.clone(), reported_as });
        if only_vma_read {
            return; // its only wrong step is already a no-mmap-under-vma-read verdict
        }
        let mut names: Vec<String> = edges.iter().map(|&e| self.edges[e].from.to_string()).collect();
        names.push(self.edges[edges[0]].from.to_string());
        let why: Vec<String> = inverted.iter().map(|&e| contradiction(self.edges[e].from.class, self.edges[e].to.class)).collect();
        let what = format!(
            "possible circular locking dependency: {}{}",
            names.join(" -> "),
            if why.is_empty() { String::new() } else { format!("; {}", why.join("; ")) }
        );
        let events = edges.iter().flat_map(|&e| [self.edges[e].witness.held.clone(), self.edges[e].witness.taken.clone()]).collect();
        let mut v = Verdict::new(LOCK_ORDER, what, ev, mm_of(ev), events);
        v.chain = edges.iter().map(|&e| self.link(e)).collect();
        out.push(v);
    }

    /// BFS from `start` to `target` keeping only strong paths. `r_in`: the step into `start`
    /// was a recursive read. Returns the edges and whether the last step was a recursive read.
    fn strong_path(&self, start: Key, target: Key, r_in: bool) -> Option<(Vec<usize>, bool)> {
        // parent[(node, r)] = (edge, previous r); false dominates true (fewer constraints).
        let mut parent: HashMap<(Key, bool), Option<(usize, bool)>> = HashMap::new();
        let mut queue = VecDeque::new();
        parent.insert((start, r_in), None);
        queue.push_back((start, r_in));
        let mut found = None;
        while let Some((node, r)) = queue.pop_front() {
            if node == target {
                if !r {
                    found = Some((node, r));
                    break;
                }
                found.get_or_insert((node, r));
                continue;
            }
            for &e in self.out_edges.get(&node).map(Vec::as_slice).unwrap_or(&[]) {
                let mut deps = self.edges[e].deps;
                if r {
                    deps &= 0b1010; // after -(?R)-> only -(E?)-> steps keep the path strong
                }
                if deps == 0 {
                    continue;
                }
                let next_r = deps & 0b1100 == 0; // no N type available: arrive as recursive read
                let to = self.edges[e].to;
                if parent.contains_key(&(to, false)) || (next_r && parent.contains_key(&(to, true))) {
                    continue;
                }
                parent.insert((to, next_r), Some((e, r)));
                queue.push_back((to, next_r));
            }
        }
        let (mut node, mut r) = found?;
        let arrived_r = r;
        let mut path = Vec::new();
        while let Some(Some((e, pr))) = parent.get(&(node, r)) {
            path.push(*e);
            node = self.edges[*e].from;
            r = *pr;
        }
        path.reverse();
        Some((path, arrived_r))
    }

    fn link(&self, i: usize) -> ChainLink {
        let e = &self.edges[i];
        ChainLink {
            from: e.from.to_string(),
            to: e.to.to_string(),
            deps: dep_names(e.deps),
            task: e.witness.task.clone(),
            ts_ns: e.witness.ts_ns,
            held_take: take_of(&e.witness.held).name(),
            taken_take: take_of(&e.witness.taken).name(),
            held_stack_id: e.witness.held.stack,
            taken_stack_id: e.witness.taken.stack,
            held_stack: Vec::new(),
            taken_stack: Vec::new(),
            contradicts: e.inverted().then(|| contradiction(e.from.class, e.to.class)),
        }
    }

    /// The graph as it stands, for export.
    pub(crate) fn graph(&self) -> Graph {
        let mut nodes: Vec<Key> = self.edges.iter().flat_map(|e| [e.from, e.to]).collect();
        nodes.sort();
        nodes.dedup();
        Graph {
            documented_order: DOCUMENTED_ORDER,
            nodes: nodes.iter().map(|k| k.to_string()).collect(),
            edges: (0..self.edges.len()).map(|i| self.link(i)).collect(),
            cycles: self
                .cycles
                .iter()
                .map(|c| GraphCycle { reported_as: c.reported_as, edges: c.edges.iter().map(|&e| self.link(e)).collect() })
                .collect(),
            chains: self.chains.len() as u64,
            chain_hits: self.chain_hits,
        }
    }
}

/// The class order of an event that took a lock (for the witness's take name).
fn take_of(ev: &Event) -> Take {
    match &ev.what {
        What::MmapLockStart { write, .. } | What::MmapLockAcquired { write, .. } | What::LockAcquire { write, .. } => Take::of(*write),
        What::VmaWriteLock { .. } => Take::Write,
        _ => Take::Read,
    }
}

fn mm_of(ev: &Event) -> u64 {
    match &ev.what {
        What::MmapLockStart { mm, .. } | What::MmapLockAcquired { mm, .. } | What::VmaWriteLock { mm, .. } => *mm,
        _ => 0,
    }
}

/// "mm/rmap.c orders X before Y" for an edge Y→X that runs against it.
fn contradiction(from: LockClass, to: LockClass) -> String {
    format!("mm/rmap.c \"Lock ordering in mm\" takes {} before {}", to.documented_name(), from.documented_name())
}

/// The lock-order graph, exported by `--graph` as JSON or DOT.
#[derive(Clone, Debug, Serialize)]
pub struct Graph {
    pub documented_order: &'static str,
    pub nodes: Vec<String>,
    pub edges: Vec<ChainLink>,
    pub cycles: Vec<GraphCycle>,
    /// Distinct held-lock chains validated, and acquisitions that matched one already validated.
    pub chains: u64,
    pub chain_hits: u64,
}

#[derive(Clone, Debug, Serialize)]
pub struct GraphCycle {
    pub reported_as: &'static str,
    pub edges: Vec<ChainLink>,
}

impl Graph {
    /// Graphviz: edges against the documented order in red, edges on a cycle bold.
    pub fn to_dot(&self) -> String {
        let on_cycle = |l: &ChainLink| self.cycles.iter().any(|c| c.edges.iter().any(|x| x.from == l.from && x.to == l.to));
        let mut s = String::from("digraph lock_order {\n  rankdir=LR;\n  node [shape=box, fontname=monospace];\n");
        for n in &self.nodes {
            s += &format!("  \"{n}\";\n");
        }
        for e in &self.edges {
            let mut attrs = vec![format!("label=\"{} {}\"", e.deps.join(","), e.task.comm.replace('"', "'"))];
            if e.contradicts.is_some() {
                attrs.push("color=red".into());
            }
            if on_cycle(e) {
                attrs.push("style=bold".into());
            }
            s += &format!("  \"{}\" -> \"{}\" [{}];\n", e.from, e.to, attrs.join(", "));
        }
        s += "}\n";
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Model;

    const MM_A: u64 = 0xffff_8880_0000_a000;
    const MM_B: u64 = 0xffff_8880_0000_b000;
    const MAPPING: u64 = 0xffff_8880_1111_0000;
    const ANON: u64 = 0xffff_8880_2222_0000;
    const INODE: u64 = 0xffff_8880_3333_0000;

    struct Run {
        model: Model,
        out: Vec<Verdict>,
        ts: u64,
    }

    impl Run {
        fn new() -> Self {
            Run { model: Model::new(), out: Vec::new(), ts: 0 }
        }
        fn ev(&mut self, tid: u32, what: What) -> &mut Self {
            self.ts += 1;
            let ev = Event { ts_ns: self.ts, cpu: 0, tid, tgid: tid, comm: format!("t{tid}").into(), task_new: true, ts_coarse: false, lost_before: 0, loss_epoch: 0, stack: Some(tid * 100 + self.ts as u32), what };
            self.model.apply(&ev, &mut self.out);
            self
        }
        fn mmap(&mut self, tid: u32, mm: u64, write: bool) -> &mut Self {
            self.ev(tid, What::MmapLockStart { mm, write, vma_read: None });
            self.ev(tid, What::MmapLockAcquired { mm, write, success: true, vma_read: None, trylock: false })
        }
        fn mmap_unlock(&mut self, tid: u32, mm: u64, write: bool) -> &mut Self {
            self.ev(tid, What::MmapLockReleased { mm, write })
        }
        fn lock(&mut self, tid: u32, class: LockClass, lock: u64, write: bool) -> &mut Self {
            self.ev(tid, What::LockAcquire { class, lock, write, trylock: false, success: true, vma_read: None })
        }
        fn unlock(&mut self, tid: u32, class: LockClass, lock: u64, write: bool) -> &mut Self {
            self.ev(tid, What::LockRelease { class, lock, write })
        }
        fn lock_order(&self) -> Vec<&Verdict> {
            self.out.iter().filter(|v| v.rule == LOCK_ORDER).collect()
        }
    }

    #[test]
    fn held_other_follows_the_non_mmap_classes_each_task_holds() {
        let mut r = Run::new();
        r.mmap(1, MM_A, false).lock(1, LockClass::IMmapRwsem, MAPPING, true);
        let held: Vec<_> = r.model.held_other().map(|(t, names)| (t.tid, names)).collect();
        assert_eq!(held, [(1, vec![format!("i_mmap_rwsem {MAPPING:#x} write")])]);
        r.unlock(1, LockClass::IMmapRwsem, MAPPING, true);
        assert_eq!(r.model.held_other().count(), 0, "only the mmap_lock is left, shown by Model::held");
    }

    #[test]
    fn abba_is_one_inversion_then_one_cycle() {
        let mut r = Run::new();
        // Documented: mmap_lock -> i_mmap_rwsem.
        r.mmap(1, MM_A, false).lock(1, LockClass::IMmapRwsem, MAPPING, true).unlock(1, LockClass::IMmapRwsem, MAPPING, true).mmap_unlock(1, MM_A, false);
        assert!(r.lock_order().is_empty(), "documented order: {:#?}", r.out);
        // Inverted: reported as soon as seen, once.
        r.lock(2, LockClass::IMmapRwsem, MAPPING, true).mmap(2, MM_B, false);
        let v = r.lock_order();
        assert_eq!(v.len(), 2, "{v:#?}");
        assert!(v[0].what.starts_with("mmap_lock taken for read while holding i_mmap_rwsem (held for write)"), "{}", v[0].what);
        assert!(v[0].what.contains("takes mm->mmap_lock before mapping->i_mmap_rwsem"), "{}", v[0].what);
        assert!(v[1].what.starts_with("possible circular locking dependency: "), "{}", v[1].what);
        assert!(v[1].what.contains("i_mmap_rwsem -> mmap_lock") && v[1].what.contains("mmap_lock -> i_mmap_rwsem"), "{}", v[1].what);
        // Each edge of the cycle names its task and both acquisitions' stacks.
        assert_eq!(v[1].chain.len(), 2);
        let tasks: HashSet<u32> = v[1].chain.iter().map(|l| l.task.tid).collect();
        assert_eq!(tasks, HashSet::from([1, 2]));
        for l in &v[1].chain {
            assert!(l.held_stack_id.is_some() && l.taken_stack_id.is_some() && l.held_stack_id != l.taken_stack_id);
        }
        assert_eq!(v[1].events.len(), 4);
        // The same pattern again: nothing new (and the chain cache answers).
        r.mmap_unlock(2, MM_B, false).unlock(2, LockClass::IMmapRwsem, MAPPING, true);
        r.lock(2, LockClass::IMmapRwsem, MAPPING, true).mmap(2, MM_B, false);
        assert_eq!(r.lock_order().len(), 2);
        assert!(r.model.lock_order.chain_hits > 0);
    }

    /// The eBPF side walks the stack of only some legal VMA write locks (`witness_stack_id`):
    /// the edge an unstacked one starts is witnessed by the next acquisition along the same
    /// order that has a stack, and one without a stack changes nothing.
    #[test]
    fn an_order_first_seen_without_a_stack_takes_the_next_ones() {
        let mut r = Run::new();
        let vma = 0xffff_8880_4444_0000;
        let write_lock = |r: &mut Run, tid: u32, stack: Option<u32>| {
            r.ts += 1;
            let what = What::VmaWriteLock { mm: MM_A, vma, facts: Default::default() };
            let ev = Event { ts_ns: r.ts, cpu: 0, tid, tgid: tid, comm: format!("t{tid}").into(), task_new: true, ts_coarse: false, lost_before: 0, loss_epoch: 0, stack, what };
            r.model.apply(&ev, &mut r.out);
        };
        let taken = |r: &Run| {
            let g = r.model.lock_order.graph();
            let e: Vec<_> = g.edges.iter().filter(|l| l.from == "mmap_lock" && l.to == "vma_lock").collect();
            assert_eq!(e.len(), 1, "{:#?}", g.edges);
            (e[0].task.tid, e[0].taken_stack_id)
        };
        r.mmap(1, MM_A, true);
        write_lock(&mut r, 1, None);
        assert_eq!(taken(&r), (1, None));
        write_lock(&mut r, 1, None);
        assert_eq!(taken(&r), (1, None), "no stack to give");
        r.mmap_unlock(1, MM_A, true).mmap(2, MM_A, true);
        write_lock(&mut r, 2, Some(77));
        assert_eq!(taken(&r), (2, Some(77)), "the first stack along the order witnesses it");
        write_lock(&mut r, 2, Some(78));
        write_lock(&mut r, 2, None);
        assert_eq!(taken(&r), (2, Some(77)), "a witness with a stack is kept");
        assert!(r.lock_order().is_empty(), "{:#?}", r.out);
    }

    #[test]
    fn three_lock_cycle_is_found_through_the_graph() {
        let mut r = Run::new();
        use LockClass::*;
        // mmap -> i_mmap, i_mmap -> anon_vma: both documented, by two tasks (one task holding
        // all three would also give mmap -> anon_vma directly: edges come from every held lock).
        r.mmap(1, MM_A, true).lock(1, IMmapRwsem, MAPPING, true);
        r.unlock(1, IMmapRwsem, MAPPING, true).mmap_unlock(1, MM_A, true);
        r.lock(2, IMmapRwsem, MAPPING, true).lock(2, AnonVma, ANON, true);
        r.unlock(2, AnonVma, ANON, true).unlock(2, IMmapRwsem, MAPPING, true);
        assert!(r.lock_order().is_empty());
        // anon_vma -> mmap_lock closes mmap -> i_mmap -> anon_vma -> mmap.
        r.lock(3, AnonVma, ANON, false).mmap(3, MM_B, false);
        let v = r.lock_order();
        assert_eq!(v.len(), 2, "{v:#?}");
        assert!(v[1].what.starts_with("possible circular locking dependency: "), "{}", v[1].what);
        assert_eq!(v[1].chain.len(), 3, "{:#?}", v[1].chain);
        let names: Vec<(&str, &str)> = v[1].chain.iter().map(|l| (l.from.as_str(), l.to.as_str())).collect();
        assert_eq!(names, [("mmap_lock", "i_mmap_rwsem"), ("i_mmap_rwsem", "anon_vma"), ("anon_vma", "mmap_lock")]);
        assert_eq!(v[1].chain.iter().filter(|l| l.contradicts.is_some()).count(), 1);
    }

    #[test]
    fn recursive_read_read_cycle_is_not_a_deadlock_but_rwsem_read_read_is() {
        use LockClass::*;
        let rec = |r: &mut Run, tid, a: (LockClass, u64), b: (LockClass, u64)| {
            r.ev(tid, What::LockAcquire { class: a.0, lock: a.1, write: false, trylock: false, success: true, vma_read: None });
            r.model.lock_order.tasks.get_mut(&tid).unwrap().last_mut().unwrap().take = Take::RecursiveRead;
            // Take b as a recursive read too, straight through the graph API.
            let held = r.model.lock_order.tasks[&tid].last().unwrap().clone();
            let ev = held.ev.clone();
            let key = Key { class: b.0, sub: 0 };
            let mut out = Vec::new();
            r.model.lock_order.add_edge(&held, key, Take::RecursiveRead, &ev, &mut out);
            r.out.extend(out);
            r.unlock(tid, a.0, a.1, false);
        };
        let mut r = Run::new();
        rec(&mut r, 1, (IMmapRwsem, MAPPING), (AnonVma, ANON));
        rec(&mut r, 2, (AnonVma, ANON), (IMmapRwsem, MAPPING));
        // The inversion is still reported; the read-read cycle is not (SR then SR).
        let v = r.lock_order();
        assert_eq!(v.len(), 1, "{v:#?}");
        assert!(!v[0].what.contains("circular"));
        assert_eq!(r.model.lock_order.graph().cycles.len(), 0);
        // rwsem readers are not recursive (writer-fair): the same read-read ABBA is a cycle.
        let mut r = Run::new();
        r.lock(1, IMmapRwsem, MAPPING, false).lock(1, AnonVma, ANON, false).unlock(1, AnonVma, ANON, false).unlock(1, IMmapRwsem, MAPPING, false);
        r.lock(2, AnonVma, ANON, false).lock(2, IMmapRwsem, MAPPING, false);
        let v = r.lock_order();
        assert_eq!(v.len(), 2, "{v:#?}");
        assert!(v[1].what.contains("circular"));
        assert_eq!(v[1].chain.iter().map(|l| l.deps.clone()).collect::<Vec<_>>(), [vec!["SN"], vec!["SN"]]);
    }

    #[test]
    fn write_then_recursive_read_chain_is_strong() {
        // A -(ER)-> B and B -(EN)-> A: R followed by E is strong, so the cycle stands.
        use LockClass::*;
        let mut r = Run::new();
        r.lock(1, IMmapRwsem, MAPPING, true);
        let held = r.model.lock_order.tasks[&1][0].clone();
        let mut out = Vec::new();
        r.model.lock_order.add_edge(&held, Key { class: AnonVma, sub: 0 }, Take::RecursiveRead, &held.ev, &mut out);
        r.unlock(1, IMmapRwsem, MAPPING, true);
        r.lock(2, AnonVma, ANON, true).lock(2, IMmapRwsem, MAPPING, true);
        r.out.extend(out);
        assert!(r.lock_order().iter().any(|v| v.what.contains("circular")), "{:#?}", r.out);
    }

    #[test]
    fn downgrade_turns_the_hold_into_a_read_hold() {
        use LockClass::*;
        let mut r = Run::new();
        r.mmap(1, MM_A, true);
        // mmap_write_downgrade: acquire_returned(read) without a start.
        r.ev(1, What::MmapLockAcquired { mm: MM_A, write: false, success: true, vma_read: None, trylock: false });
        assert_eq!(r.model.lock_order.holds(1, MmapLock, MM_A), Some(Take::Read));
        r.lock(1, IMmapRwsem, MAPPING, false);
        let g = r.model.lock_order.graph();
        assert_eq!(g.edges.len(), 1);
        assert_eq!(g.edges[0].deps, ["SN"], "the edge is from a read hold");
        // One release (read) ends the downgraded hold; no nesting left behind.
        r.unlock(1, IMmapRwsem, MAPPING, false).mmap_unlock(1, MM_A, false);
        assert!(!r.model.lock_order.tasks.contains_key(&1));
        assert!(r.lock_order().is_empty());
    }

    #[test]
    fn two_mms_nest_as_a_subclass_not_a_self_cycle() {
        use LockClass::*;
        let mut r = Run::new();
        // dup_mmap: parent's mmap_lock, then the child's (mmap_write_lock_nested).
        r.mmap(1, MM_A, true).mmap(1, MM_B, true).mmap_unlock(1, MM_B, true).mmap_unlock(1, MM_A, true);
        // The other order of the same two mms, by another task: still class -> class/1.
        r.mmap(2, MM_B, true).mmap(2, MM_A, true);
        assert!(r.lock_order().is_empty(), "{:#?}", r.out);
        let g = r.model.lock_order.graph();
        assert_eq!(g.nodes, ["mmap_lock", "mmap_lock/1"]);
        assert_eq!(g.edges.len(), 1);
        r.mmap_unlock(2, MM_A, true).mmap_unlock(2, MM_B, true);
        // A lock taken under the nested one and before an mmap_lock elsewhere closes a cycle.
        r.mmap(3, MM_A, true).mmap(3, MM_B, true).lock(3, IRwsem, INODE, true);
        r.unlock(3, IRwsem, INODE, true).mmap_unlock(3, MM_B, true).mmap_unlock(3, MM_A, true);
        assert!(r.model.lock_order.graph().edges.iter().any(|e| e.from == "mmap_lock/1" && e.to == "i_rwsem"));
        r.lock(4, IRwsem, INODE, true).mmap(4, MM_A, false);
        let v = r.lock_order();
        assert_eq!(v.iter().filter(|v| v.what.contains("circular")).count(), 1, "{v:#?}");
    }

    #[test]
    fn vma_read_then_mmap_is_no_mmap_under_vma_read_and_a_trylock_adds_nothing() {
        let mut r = Run::new();
        const VMA: u64 = 0xffff_8880_0bad_0000;
        // mmap write -> vma_start_write: documented.
        r.mmap(1, MM_A, true).ev(1, What::VmaWriteLock { mm: MM_A, vma: VMA, facts: Default::default() }).mmap_unlock(1, MM_A, true);
        // A trylock under the VMA read lock: no edge.
        r.ev(2, What::MmapLockStart { mm: MM_A, write: false, vma_read: Some(VMA) });
        r.ev(2, What::MmapLockAcquired { mm: MM_A, write: false, success: true, vma_read: Some(VMA), trylock: true });
        r.mmap_unlock(2, MM_A, false);
        assert_eq!(r.model.lock_order.graph().edges.len(), 1);
        // Blocking: the edge vma -> mmap_lock closes a cycle, reported by no-mmap-under-vma-read.
        r.ev(3, What::MmapLockStart { mm: MM_A, write: false, vma_read: Some(VMA) });
        r.ev(3, What::MmapLockAcquired { mm: MM_A, write: false, success: true, vma_read: Some(VMA), trylock: false });
        let rules: Vec<&str> = r.out.iter().map(|v| v.rule).collect();
        assert_eq!(rules, [NO_MMAP_UNDER_VMA_READ]);
        let g = r.model.lock_order.graph();
        assert_eq!(g.cycles.len(), 1);
        assert_eq!(g.cycles[0].reported_as, NO_MMAP_UNDER_VMA_READ);
        assert!(g.to_dot().contains("\"vma_lock\" -> \"mmap_lock\" [label=\"SN t3\", color=red, style=bold]"), "{}", g.to_dot());
    }

    #[test]
    fn releasing_an_outer_lock_of_a_class_never_makes_a_self_edge() {
        use LockClass::*;
        let (a, b, c) = (ANON, ANON + 0x100, ANON + 0x200);
        let mut r = Run::new();
        // Hold a (anon_vma) and b (anon_vma/1), drop a, take c: c nests under b as anon_vma/2.
        r.lock(1, AnonVma, a, true).lock(1, AnonVma, b, true).unlock(1, AnonVma, a, true).lock(1, AnonVma, c, true);
        let g = r.model.lock_order.graph();
        assert!(g.edges.iter().all(|e| e.from != e.to), "{:#?}", g.edges);
        assert!(g.edges.iter().any(|e| e.from == "anon_vma/1" && e.to == "anon_vma/2"));
        assert!(r.lock_order().is_empty(), "{:#?}", r.out);
        // Deeper than lockdep's 8 subclasses: the last one is shared, without a self-edge.
        let mut r = Run::new();
        for i in 0..12 {
            r.lock(2, AnonVma, ANON + 0x100 * i, true);
        }
        let g = r.model.lock_order.graph();
        assert!(g.edges.iter().all(|e| e.from != e.to));
        assert!(g.nodes.contains(&"anon_vma/7".to_string()));
        assert!(r.lock_order().is_empty());
    }

    #[test]
    fn a_loss_forgets_held_locks() {
        use LockClass::*;
        let mut r = Run::new();
        r.lock(1, AnonVma, ANON, true);
        // Events were lost (its release among them, perhaps): the hold is forgotten.
        r.ts += 1;
        let ev = Event { ts_ns: r.ts, cpu: 0, tid: 1, tgid: 1, comm: "t1".into(), task_new: true, ts_coarse: false, lost_before: 2, loss_epoch: 1, stack: None, what: What::LockAcquire { class: IMmapRwsem, lock: MAPPING, write: true, trylock: false, success: true, vma_read: None } };
        r.model.apply(&ev, &mut r.out);
        assert!(r.model.lock_order.graph().edges.is_empty());
        assert!(r.lock_order().is_empty());
    }

    #[test]
    fn nothing_is_learned_where_the_kernel_skipped_hook_hits() {
        use LockClass::*;
        let mut r = Run::new();
        // The vma_lock -> anon_vma edge of the fault path, learned in the clear.
        r.lock(3, VmaLock, 0x7000, false).lock(3, AnonVma, ANON, true).unlock(3, AnonVma, ANON, true).unlock(3, VmaLock, 0x7000, false);
        // A stretch with a skipped hit: task 1's up_write(anon_vma) is the one the kernel
        // skipped, so its next mmap_lock seems taken under anon_vma.
        r.ev(0, What::Missed { count: 1, span: 3 });
        r.lock(1, AnonVma, ANON, true).mmap(1, MM_A, false);
        assert!(
            r.model.lock_order.edges.iter().all(|e| e.to.class != MmapLock),
            "an edge learned from a hold the kernel may have released unseen: {:#?}",
            r.model.lock_order.edges
        );
        r.mmap_unlock(1, MM_A, false);
        // After the stretch: mmap_lock -> vma_lock (vma_start_write) closes no cycle.
        r.mmap(2, MM_B, true).ev(2, What::VmaWriteLock { vma: 0x7000, mm: MM_B, facts: Default::default() });
        assert!(r.lock_order().is_empty(), "{:#?}", r.lock_order());
        // And outside such a stretch the same pattern is learned (and is an inversion).
        r.mmap_unlock(2, MM_B, true).lock(4, AnonVma, ANON, true).mmap(4, MM_A, false);
        assert!(r.model.lock_order.edges.iter().any(|e| e.from.class == AnonVma && e.to.class == MmapLock));
        assert!(!r.lock_order().is_empty());
    }

    #[test]
    fn a_rwsem_released_under_another_class_is_still_released() {
        use LockClass::*;
        let mut r = Run::new();
        // Taken while its address was still known as an anon_vma's, released after it was
        // relearned as the mapping's i_mmap_rwsem: the hold ends all the same.
        r.mmap(1, MM_A, false).lock(1, AnonVma, MAPPING, false).unlock(1, IMmapRwsem, MAPPING, false).mmap_unlock(1, MM_A, false);
        r.mmap(1, MM_A, false);
        assert!(r.lock_order().is_empty(), "{:#?}", r.lock_order());
        assert!(r.model.lock_order.edges.iter().all(|e| e.from.class == MmapLock), "an edge from the released rwsem");
        // An mmap_lock release never ends a rwsem hold at the same number, nor the reverse.
        r.lock(1, IRwsem, MM_A, false).mmap_unlock(1, MM_A, false);
        assert_eq!(r.model.lock_order.tasks[&1].len(), 1);
        assert_eq!(r.model.lock_order.tasks[&1][0].key.class, IRwsem);
    }

    #[test]
    fn forgetting_keeps_edges_and_exits_drop_held_locks() {
        use LockClass::*;
        let mut r = Run::new();
        r.lock(1, IMmapRwsem, MAPPING, true).ev(1, What::TaskExit);
        // The exited task's hold is gone: no edge from it.
        r.mmap(1, MM_A, false);
        assert!(r.model.lock_order.graph().edges.is_empty());
        r.lock(1, AnonVma, ANON, true);
        r.model.lock_order.forget();
        assert_eq!(r.model.lock_order.graph().edges.len(), 1);
    }
}
