//! Drawing: one function per widget, each reading the [`App`] and nothing else.

mod detail;
mod help;
mod rates;
mod rules;
mod tasks;
mod violations;

use ratatui::{
    Frame,
    layout::{Constraint, Layout, Rect},
    style::{Color, Modifier, Style, Stylize as _},
    text::{Line, Span},
    widgets::{Paragraph, Tabs},
};

use super::{
    app::{App, Pane, Prompt},
    keys::KEYS,
};

/// Seconds of CLOCK_MONOTONIC, as verdict lines print them (to the µs here).
pub(super) fn secs(ns: u64) -> String {
    format!("{}.{:06}s", ns / 1_000_000_000, ns % 1_000_000_000 / 1_000)
}

pub(super) fn selected_style() -> Style {
    Style::default().add_modifier(Modifier::REVERSED)
}

pub fn draw(f: &mut Frame, app: &mut App) {
    let [top, body, footer] = Layout::vertical([Constraint::Length(1), Constraint::Min(3), Constraint::Length(1)]).areas(f.area());
    // Table header and borders take 3 rows.
    app.page = usize::from(body.height.saturating_sub(3)).max(1);
    header(f, top, app);
    if app.detail {
        detail::render(f, body, app);
    } else {
        match app.pane {
            Pane::Violations => violations::render(f, body, app),
            Pane::Tasks => tasks::render(f, body, app),
            Pane::Rates => rates::render(f, body, app),
            Pane::Rules => rules::render(f, body, app),
        }
    }
    bottom(f, footer, app);
    if app.help {
        help::render(f, body);
    }
}

/// Pane tabs on the left; what is traced, the verdict count and any freeze or filter on the right.
fn header(f: &mut Frame, area: Rect, app: &App) {
    let titles: Vec<String> = Pane::ALL.iter().enumerate().map(|(i, p)| format!("{} {}", i + 1, p.title())).collect();
    let d = app.data();
    // Most telling first: the status is cut on the right when the terminal is narrow.
    let mut status = Vec::new();
    if app.frozen() {
        status.push(Span::styled("FROZEN", Style::default().fg(Color::Black).bg(Color::Cyan)));
        status.push(Span::raw(" │ "));
    }
    let fl = &app.filters;
    let mut filters = Vec::new();
    if let Some(p) = fl.pid {
        filters.push(format!("pid={p}"));
    }
    if !fl.comm.is_empty() {
        filters.push(format!("comm~{}", fl.comm));
    }
    if let Some(r) = fl.rule {
        filters.push(format!("rule={r}"));
    }
    if !fl.search.is_empty() {
        filters.push(format!("/{}", fl.search));
    }
    if !filters.is_empty() {
        status.push(Span::styled(filters.join(" "), Style::default().fg(Color::Magenta)));
        status.push(Span::raw(" │ "));
    }
    status.push(Span::styled(format!("{} violations", d.verdicts), Style::default().add_modifier(Modifier::BOLD)));
    if let Some(why) = &d.ended {
        status.push(Span::styled(format!(" │ ended: {why}"), Style::default().fg(Color::Yellow)));
    }
    status.push(Span::raw(d.started.as_ref().map_or(" │ starting".into(), |s| format!(" │ {}", s.target))));
    let status = Line::from(status);
    // The tabs keep their width; the status gets the rest and is cut on the left if need be.
    let tabs_width = titles.iter().map(|t| t.chars().count() as u16 + 3).sum::<u16>();
    let [left, right] = Layout::horizontal([Constraint::Length(tabs_width), Constraint::Fill(1)]).areas(area);
    let tabs = Tabs::new(titles)
        .select(app.pane.into_index())
        .highlight_style(Style::default().add_modifier(Modifier::BOLD | Modifier::REVERSED))
        .divider("│");
    f.render_widget(tabs, left);
    f.render_widget(Paragraph::new(status), right);
}

/// The prompt while typing, else the footer keys from the key table.
fn bottom(f: &mut Frame, area: Rect, app: &App) {
    let line = match &app.prompt {
        Some((kind, text)) => {
            let label = match kind {
                Prompt::Search => "search",
                Prompt::Pid => "pid or tid",
                Prompt::Comm => "command name contains",
            };
            Line::from(vec![Span::raw(format!("{label}: ")).bold(), Span::raw(text.clone()), Span::raw("█"), Span::raw("   Enter apply · Esc cancel").dim()])
        }
        None => Line::from(
            KEYS.iter()
                .filter_map(|b| b.footer.map(|w| (b.keys, w)))
                .flat_map(|(k, w)| [Span::styled(format!(" {k} "), Style::default().fg(Color::Black).bg(Color::Gray)), Span::raw(format!(" {w} "))])
                .collect::<Vec<_>>(),
        ),
    };
    f.render_widget(Paragraph::new(line), area);
}

impl Pane {
    fn into_index(self) -> usize {
        Pane::ALL.iter().position(|p| *p == self).unwrap_or(0)
    }
}

#[cfg(test)]
mod tests;
