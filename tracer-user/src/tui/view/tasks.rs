//! Pane 2: the locks each task holds right now (mmap_locks, and the other classes the lock-order
//! model follows), who waits, and the lock-order edges seen.

use std::collections::HashSet;

use ratatui::{
    Frame,
    layout::{Constraint, Layout, Rect},
    style::{Modifier, Style},
    text::Line,
    widgets::{Block, Paragraph, Row, Table, TableState},
};

use super::{secs, selected_style};
use crate::tui::app::App;

pub fn render(f: &mut Frame, area: Rect, app: &App) {
    let [holds, order] = Layout::vertical([Constraint::Fill(2), Constraint::Fill(1)]).areas(area);
    let d = app.data();
    let empty = Vec::new();
    let held = d.tick.as_ref().map_or(&empty, |t| &t.held);
    let fl = &app.filters;
    // Per task: its mmap_locks, then what the lock-order model follows of the other classes.
    let other = d.tick.as_ref().map_or(&[][..], |t| &t.held_other[..]);
    let mut tasks: Vec<(&crate::model::TaskRef, Vec<String>)> = held
        .iter()
        .map(|(t, locks)| {
            let locks = locks.iter().map(|(mm, mode, n)| format!("mmap_lock mm {mm:#x} {}{}", mode.name(), if *n > 1 { format!(" ×{n}") } else { String::new() })).collect();
            (t, locks)
        })
        .collect();
    for (t, names) in other {
        match tasks.iter_mut().find(|(x, _)| x.tid == t.tid) {
            Some((_, locks)) => locks.extend(names.iter().cloned()),
            None => tasks.push((t, names.clone())),
        }
    }
    tasks.sort_by_key(|(t, _)| (t.tgid, t.tid));
    let rows: Vec<Row> = tasks
        .iter()
        .filter(|(t, _)| fl.task(t.tid, t.tgid, &t.comm))
        .map(|(t, locks)| Row::new(vec![t.comm.to_string(), t.tid.to_string(), t.tgid.to_string(), locks.join(", ")]))
        .collect();
    let count = rows.len();
    let table = Table::new(rows, [Constraint::Length(16), Constraint::Length(8), Constraint::Length(8), Constraint::Fill(1)])
        .header(Row::new(["task", "tid", "pid", "locks held now"]).style(Style::default().add_modifier(Modifier::BOLD)))
        .block(Block::bordered().title(format!(" Tasks holding locks now ({count}) ")))
        .row_highlight_style(selected_style());
    let mut state = TableState::default().with_selected((count > 0).then_some(app.selection()));
    f.render_stateful_widget(table, holds, &mut state);

    let mut lines: Vec<Line> = d
        .tick
        .iter()
        .flat_map(|t| &t.waiting)
        .filter(|(t, ..)| fl.task(t.tid, t.tgid, &t.comm))
        .map(|(t, mm, mode, since)| Line::from(format!("waiting: {t} for mm {mm:#x} {} since {}", mode.name(), secs(*since))))
        .collect();
    let pairs: HashSet<(u64, u64)> = d.edges.iter().map(|e| e.locks).collect();
    for e in &d.edges {
        let cycle = pairs.contains(&(e.locks.1, e.locks.0));
        lines.push(Line::from(format!(
            "{}: {} (first by task {} at {}){}",
            if cycle { "CYCLE" } else { "order" },
            e.label,
            e.to.tid,
            secs(e.to.ts_ns),
            if cycle { " — the reverse order was seen too" } else { "" }
        )));
    }
    if lines.is_empty() {
        lines.push(Line::from("no task waits for an mmap_lock; no lock-order edge seen yet"));
    }
    f.render_widget(Paragraph::new(lines).block(Block::bordered().title(" Waiting, and lock order (A held while B taken) ")), order);
}
