//! Pane 4: every rule, and what this kernel lets vmalock do with it (the capability probe).

use ratatui::{
    Frame,
    layout::{Constraint, Rect},
    style::{Color, Modifier, Style},
    widgets::{Block, Cell, Row, Table, TableState},
};

use super::selected_style;
use crate::tui::app::App;

pub fn render(f: &mut Frame, area: Rect, app: &App) {
    let d = app.data();
    let rules = d.started.as_ref().map(|s| s.rules.as_slice()).unwrap_or_default();
    let rows = rules.iter().map(|(id, title, status)| {
        let color = if status.starts_with("checked live") {
            Color::Green
        } else if status.starts_with("checked") || status.starts_with("in the recording") {
            Color::Cyan
        } else {
            Color::DarkGray
        };
        let n = d.groups.iter().filter(|g| g.rule == *id).map(|g| g.count).sum::<u64>();
        Row::new(vec![Cell::from(*id), Cell::from(status.clone()).style(Style::default().fg(color)), Cell::from(n.to_string()), Cell::from(*title)])
    });
    let hooks = d.started.as_ref().map_or(String::new(), |s| format!(" Rules on {} ({}) ", s.kernel_release, s.hooks));
    let table = Table::new(rows, [Constraint::Length(28), Constraint::Fill(3), Constraint::Length(6), Constraint::Fill(2)])
        .header(Row::new(["rule", "on this kernel", "seen", "what it requires"]).style(Style::default().add_modifier(Modifier::BOLD)))
        .block(Block::bordered().title(hooks))
        .row_highlight_style(selected_style());
    let mut state = TableState::default().with_selected((!rules.is_empty()).then_some(app.selection()));
    f.render_stateful_widget(table, area, &mut state);
}
