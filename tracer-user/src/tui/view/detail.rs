//! The detail of one violation group: the rule, its citation and fix, the proof, the stack and
//! any lock-order chain through the lock.

use ratatui::{
    Frame,
    layout::Rect,
    style::{Modifier, Style, Stylize as _},
    text::{Line, Span},
    widgets::{Block, Paragraph, Wrap},
};

use super::secs;
use crate::{model::rule, tui::app::App};

pub fn render(f: &mut Frame, area: Rect, app: &App) {
    let Some(g) = app.selected_group() else {
        f.render_widget(Paragraph::new("no violation selected").block(Block::bordered()), area);
        return;
    };
    let v = &g.last;
    let bold = Style::default().add_modifier(Modifier::BOLD);
    let field = |name: &str, text: String| Line::from(vec![Span::styled(format!("{name:>8}: "), bold), Span::raw(text)]);
    let mut lines = Vec::new();
    let r = rule(v.rule);
    lines.push(Line::from(vec![Span::styled(v.rule, bold), Span::raw(format!(" — {}", r.map_or("", |r| r.title)))]));
    lines.push(field("latest", v.what.clone()));
    lines.push(field("task", format!("{} mm {:#x} at {}", v.task, v.mm, secs(v.ts_ns))));
    let tasks: Vec<String> = g.tasks.iter().map(|(tid, (tgid, comm))| format!("{comm} {tid}/{tgid}")).collect();
    lines.push(field("seen", format!("{} times at {} from {} to {} by {}", g.count, g.site, secs(g.first_ns), secs(g.last_ns), tasks.join(", "))));
    if let Some(r) = r {
        lines.push(field("rule", r.explanation.to_string()));
        lines.push(field("source", r.source.to_string()));
        lines.push(field("fix", r.fix.to_string()));
    }
    lines.push(Line::from(Span::styled("proving events:", bold)));
    lines.extend(v.event_lines().into_iter().map(|l| Line::from(format!("  {l}"))));
    lines.push(Line::from(Span::styled("kernel stack:", bold)));
    if v.stack.is_empty() {
        lines.push(Line::from("  (none: this rule's event carries no stack)").dim());
    }
    lines.extend(v.stack.iter().map(|s| Line::from(format!("  {s}"))));
    lines.push(Line::from(Span::styled("lock order:", bold)));
    // A lock-order verdict carries its own chain: lockdep's report, with both stacks per edge.
    lines.extend(v.lockdep_report().lines().filter(|_| !v.chain.is_empty()).map(|l| Line::from(l.to_string())));
    let chain: Vec<_> = app.data().edges.iter().filter(|e| e.locks.0 == v.mm || e.locks.1 == v.mm).collect();
    if chain.is_empty() {
        lines.push(Line::from("  (no lock-order edge through this mm seen)").dim());
    }
    for e in chain {
        lines.push(Line::from(format!("  {} (task {} at {})", e.label, e.to.tid, secs(e.to.ts_ns))));
    }
    let p = Paragraph::new(lines)
        .wrap(Wrap { trim: false })
        .scroll((app.detail_scroll, 0))
        .block(Block::bordered().title(" Violation detail (Esc back, ↑↓ scroll) "));
    f.render_widget(p, area);
}
