//! Pane 1: violations grouped by rule and kernel site.

use ratatui::{
    Frame,
    layout::{Constraint, Rect},
    style::{Modifier, Style},
    widgets::{Block, Cell, Row, Table, TableState},
};

use super::{secs, selected_style};
use crate::tui::app::App;

pub fn render(f: &mut Frame, area: Rect, app: &App) {
    let groups = app.groups();
    let rows = groups.iter().map(|g| {
        let mut tasks: Vec<String> = g.tasks.iter().take(3).map(|(tid, (_, comm))| format!("{comm}/{tid}")).collect();
        if g.tasks.len() > 3 {
            tasks.push(format!("+{}", g.tasks.len() - 3));
        }
        Row::new(vec![
            Cell::from(g.count.to_string()),
            Cell::from(g.rule),
            Cell::from(g.site.clone()),
            Cell::from(tasks.join(" ")),
            Cell::from(secs(g.first_ns)),
            Cell::from(secs(g.last_ns)),
        ])
    });
    let title = if groups.is_empty() && app.data().verdicts == 0 {
        " Violations: none so far ".to_string()
    } else {
        format!(" Violations by rule and site ({} groups shown) ", groups.len())
    };
    let table = Table::new(
        rows,
        [Constraint::Length(6), Constraint::Length(28), Constraint::Fill(2), Constraint::Fill(2), Constraint::Length(16), Constraint::Length(16)],
    )
    .header(Row::new(["count", "rule", "site", "tasks", "first", "last"]).style(Style::default().add_modifier(Modifier::BOLD)))
    .block(Block::bordered().title(title))
    .row_highlight_style(selected_style());
    let mut state = TableState::default().with_selected((!groups.is_empty()).then_some(app.selection()));
    f.render_stateful_widget(table, area, &mut state);
}
