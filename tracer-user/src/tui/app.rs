//! The dashboard's state, with no terminal in sight: updates from ingest and actions from keys
//! go in, the view functions read it out. Every transition is a plain method call, so tests
//! drive it directly.

use std::collections::{BTreeMap, HashMap, VecDeque};

use super::feed::Update;
use crate::{
    export::order::OrderEdge,
    model::Verdict,
    observe::{Started, Tick},
};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    Quit,
    ToggleHelp,
    NextPane,
    PrevPane,
    Pane(usize),
    Up,
    Down,
    PageUp,
    PageDown,
    Top,
    Bottom,
    Open,
    Back,
    ToggleFreeze,
    Prompt(Prompt),
    CycleRule,
    ClearFilters,
    Input(char),
    Backspace,
    Submit,
}

/// What a text prompt is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Prompt {
    Search,
    Pid,
    Comm,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Pane {
    Violations,
    Tasks,
    Rates,
    Rules,
}

impl Pane {
    pub const ALL: [Pane; 4] = [Pane::Violations, Pane::Tasks, Pane::Rates, Pane::Rules];

    pub fn title(self) -> &'static str {
        match self {
            Pane::Violations => "Violations",
            Pane::Tasks => "Tasks & locks",
            Pane::Rates => "Rates",
            Pane::Rules => "Rules",
        }
    }

    fn index(self) -> usize {
        Pane::ALL.iter().position(|p| *p == self).unwrap_or(0)
    }
}

/// Violations of one rule at one kernel site.
#[derive(Clone, Debug)]
pub struct Group {
    pub rule: &'static str,
    pub site: String,
    pub count: u64,
    pub first_ns: u64,
    pub last_ns: u64,
    /// tid -> (tgid, comm) of every task seen breaking it here.
    pub tasks: BTreeMap<u32, (u32, String)>,
    /// The latest verdict, shown in the detail view.
    pub last: Verdict,
}

/// The kernel site of a verdict: its innermost symbolized frame without offset, or what the
/// offending event names when there is no stack.
pub fn site_of(v: &Verdict) -> String {
    if let Some(f) = v.stack.first() {
        return f.split(['+', ' ']).next().unwrap_or(f).to_string();
    }
    v.events.last().map_or("?".into(), |e| crate::event::kind_name(e.kind()).to_string())
}

/// Samples kept per rate sparkline (one per tick).
pub const HISTORY: usize = 120;

/// Everything the panes show; cloned when the display freezes.
#[derive(Clone, Debug, Default)]
pub struct Data {
    pub started: Option<Started>,
    pub groups: Vec<Group>,
    index: HashMap<(&'static str, String), usize>,
    pub verdicts: u64,
    pub tick: Option<Tick>,
    /// Events per second per probe kind, oldest first.
    pub rates: BTreeMap<&'static str, VecDeque<u64>>,
    pub lost_rate: VecDeque<u64>,
    pub edges: Vec<OrderEdge>,
    pub ended: Option<String>,
}

impl Data {
    fn apply(&mut self, u: Update) {
        match u {
            Update::Started(s) => self.started = Some(s),
            Update::Verdicts(vs) => vs.into_iter().for_each(|v| self.verdict(v)),
            Update::Edges(es) => self.edges.extend(es),
            Update::Tick(t) => self.tick(t),
            Update::Ended(why) => self.ended = Some(why),
        }
    }

    fn verdict(&mut self, v: Verdict) {
        self.verdicts += 1;
        let key = (v.rule, site_of(&v));
        let i = *self.index.entry(key.clone()).or_insert_with(|| {
            self.groups.push(Group {
                rule: key.0,
                site: key.1,
                count: 0,
                first_ns: v.ts_ns,
                last_ns: v.ts_ns,
                tasks: BTreeMap::new(),
                last: v.clone(),
            });
            self.groups.len() - 1
        });
        let g = &mut self.groups[i];
        g.count += 1;
        g.first_ns = g.first_ns.min(v.ts_ns);
        g.last_ns = g.last_ns.max(v.ts_ns);
        g.tasks.insert(v.task.tid, (v.task.tgid, v.task.comm.to_string()));
        g.last = v;
    }

    fn tick(&mut self, t: Tick) {
        if let Some(prev) = &self.tick {
            let secs = (t.ts_ns.saturating_sub(prev.ts_ns)) as f64 / 1e9;
            if secs > 0.0 {
                let before: HashMap<_, _> = prev.seen.iter().copied().collect();
                for (k, n) in &t.seen {
                    let rate = (n.saturating_sub(*before.get(k).unwrap_or(&0)) as f64 / secs).round() as u64;
                    push(self.rates.entry(k).or_default(), rate);
                }
                push(&mut self.lost_rate, (t.lost.saturating_sub(prev.lost) as f64 / secs).round() as u64);
            }
        }
        self.tick = Some(t);
    }
}

fn push(q: &mut VecDeque<u64>, v: u64) {
    if q.len() == HISTORY {
        q.pop_front();
    }
    q.push_back(v);
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Filters {
    pub pid: Option<u32>,
    pub comm: String,
    pub rule: Option<&'static str>,
    pub search: String,
}

impl Filters {
    pub fn is_empty(&self) -> bool {
        *self == Filters::default()
    }

    /// Whether a task passes the pid and comm filters.
    pub fn task(&self, tid: u32, tgid: u32, comm: &str) -> bool {
        self.pid.is_none_or(|p| p == tid || p == tgid) && (self.comm.is_empty() || comm.contains(&self.comm))
    }

    pub fn group(&self, g: &Group) -> bool {
        let tasks_ok = g.tasks.iter().any(|(tid, (tgid, comm))| self.task(*tid, *tgid, comm));
        let search = self.search.to_lowercase();
        let search_ok = search.is_empty()
            || [g.rule, g.site.as_str(), g.last.what.as_str()].iter().any(|s| s.to_lowercase().contains(&search))
            || g.tasks.values().any(|(_, c)| c.to_lowercase().contains(&search));
        tasks_ok && search_ok && self.rule.is_none_or(|r| r == g.rule)
    }
}

pub struct App {
    live: Data,
    /// What the display shows while frozen.
    frozen: Option<Data>,
    pub pane: Pane,
    /// Selected row per pane.
    pub selected: [usize; 4],
    pub detail: bool,
    pub help: bool,
    pub filters: Filters,
    /// An open prompt and what has been typed.
    pub prompt: Option<(Prompt, String)>,
    pub quit: bool,
    /// Rows a page moves (set by the view from the terminal height).
    pub page: usize,
    /// Lines the detail view is scrolled down.
    pub detail_scroll: u16,
}

impl Default for App {
    fn default() -> Self {
        App { live: Data::default(), frozen: None, pane: Pane::Violations, selected: [0; 4], detail: false, help: false, filters: Filters::default(), prompt: None, quit: false, page: 10, detail_scroll: 0 }
    }
}

impl App {
    pub fn new() -> Self {
        Self::default()
    }

    /// What the panes show: the frozen copy while frozen.
    pub fn data(&self) -> &Data {
        self.frozen.as_ref().unwrap_or(&self.live)
    }

    pub fn frozen(&self) -> bool {
        self.frozen.is_some()
    }

    /// Takes an update from ingest (always, frozen or not: freezing only holds the display).
    pub fn update(&mut self, u: Update) {
        self.live.apply(u);
    }

    /// The violation groups passing the filters, most frequent first.
    pub fn groups(&self) -> Vec<&Group> {
        let mut g: Vec<&Group> = self.data().groups.iter().filter(|g| self.filters.group(g)).collect();
        g.sort_by(|a, b| b.count.cmp(&a.count).then(a.rule.cmp(b.rule)).then(a.site.cmp(&b.site)));
        g
    }

    pub fn selected_group(&self) -> Option<&Group> {
        self.groups().get(self.selected[Pane::Violations.index()]).copied()
    }

    /// Rows in the current pane, to keep the selection inside.
    fn rows(&self) -> usize {
        match self.pane {
            Pane::Violations => self.groups().len(),
            Pane::Tasks => self.data().tick.as_ref().map_or(0, |t| t.held.iter().filter(|(t, _)| self.filters.task(t.tid, t.tgid, &t.comm)).count()),
            Pane::Rates => self.data().rates.len(),
            Pane::Rules => self.data().started.as_ref().map_or(0, |s| s.rules.len()),
        }
    }

    pub fn selection(&self) -> usize {
        self.selected[self.pane.index()]
    }

    fn select(&mut self, f: impl FnOnce(usize, usize) -> usize) {
        let rows = self.rows();
        let i = self.pane.index();
        self.selected[i] = if rows == 0 { 0 } else { f(self.selected[i], rows).min(rows - 1) };
    }

    pub fn handle(&mut self, a: Action) {
        if let Some((kind, text)) = self.prompt.as_mut() {
            match a {
                Action::Input(c) => text.push(c),
                Action::Backspace => {
                    text.pop();
                }
                Action::Submit => {
                    let (kind, text) = (*kind, text.trim().to_string());
                    self.prompt = None;
                    match kind {
                        Prompt::Search => self.filters.search = text,
                        Prompt::Comm => self.filters.comm = text,
                        // Not a number: no pid filter rather than a filter that hides everything.
                        Prompt::Pid => self.filters.pid = text.parse().ok(),
                    }
                    self.select(|_, _| 0);
                }
                Action::Back => self.prompt = None,
                Action::Quit => self.quit = true,
                _ => {}
            }
            return;
        }
        if self.detail && !self.help {
            // In the detail view the movement keys scroll it.
            let page = u16::try_from(self.page).unwrap_or(u16::MAX);
            let s = &mut self.detail_scroll;
            match a {
                Action::Up => *s = s.saturating_sub(1),
                Action::Down => *s = s.saturating_add(1),
                Action::PageUp => *s = s.saturating_sub(page),
                Action::PageDown => *s = s.saturating_add(page),
                Action::Top => *s = 0,
                _ => {}
            }
            if matches!(a, Action::Up | Action::Down | Action::PageUp | Action::PageDown | Action::Top) {
                return;
            }
        }
        match a {
            Action::Quit => self.quit = true,
            Action::ToggleHelp => self.help = !self.help,
            Action::NextPane => self.pane = Pane::ALL[(self.pane.index() + 1) % 4],
            Action::PrevPane => self.pane = Pane::ALL[(self.pane.index() + 3) % 4],
            Action::Pane(i) => self.pane = Pane::ALL[i.min(3)],
            Action::Up => self.select(|s, _| s.saturating_sub(1)),
            Action::Down => self.select(|s, _| s + 1),
            Action::PageUp => {
                let p = self.page;
                self.select(|s, _| s.saturating_sub(p))
            }
            Action::PageDown => {
                let p = self.page;
                self.select(|s, _| s + p)
            }
            Action::Top => self.select(|_, _| 0),
            Action::Bottom => self.select(|_, rows| rows),
            Action::Open => {
                self.detail = self.pane == Pane::Violations && self.selected_group().is_some();
                self.detail_scroll = 0;
            }
            Action::Back => {
                if self.help {
                    self.help = false
                } else {
                    self.detail = false
                }
            }
            Action::ToggleFreeze => self.frozen = if self.frozen.is_some() { None } else { Some(self.live.clone()) },
            Action::Prompt(p) => {
                let current = match p {
                    Prompt::Search => self.filters.search.clone(),
                    Prompt::Comm => self.filters.comm.clone(),
                    Prompt::Pid => self.filters.pid.map(|p| p.to_string()).unwrap_or_default(),
                };
                self.prompt = Some((p, current));
            }
            Action::CycleRule => {
                let mut seen: Vec<&'static str> = self.data().groups.iter().map(|g| g.rule).collect();
                seen.sort_unstable();
                seen.dedup();
                self.filters.rule = match self.filters.rule.and_then(|r| seen.iter().position(|s| *s == r)) {
                    None => seen.first().copied(),
                    Some(i) => seen.get(i + 1).copied(),
                };
                self.select(|_, _| 0);
            }
            Action::ClearFilters => {
                self.filters = Filters::default();
                self.select(|_, _| 0);
            }
            Action::Input(_) | Action::Backspace | Action::Submit => {}
        }
        self.select(|s, _| s);
    }
}

#[cfg(test)]
pub(crate) mod tests;
