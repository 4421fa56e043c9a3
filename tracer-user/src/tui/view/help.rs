//! `?`: every key, from the same table as the footer.

use ratatui::{
    Frame,
    layout::{Constraint, Flex, Layout, Rect},
    style::{Modifier, Style},
    text::{Line, Span},
    widgets::{Block, Clear, Paragraph},
};

use crate::tui::keys::KEYS;

pub fn render(f: &mut Frame, area: Rect) {
    let height = (KEYS.len() as u16 + 2).min(area.height);
    let [v] = Layout::vertical([Constraint::Length(height)]).flex(Flex::Center).areas(area);
    let [popup] = Layout::horizontal([Constraint::Length(64.min(area.width))]).flex(Flex::Center).areas(v);
    let lines: Vec<Line> = KEYS
        .iter()
        .map(|b| Line::from(vec![Span::styled(format!("{:>10}  ", b.keys), Style::default().add_modifier(Modifier::BOLD)), Span::raw(b.help)]))
        .collect();
    f.render_widget(Clear, popup);
    f.render_widget(Paragraph::new(lines).block(Block::bordered().title(" Keys (Esc or ? to close) ")), popup);
}
