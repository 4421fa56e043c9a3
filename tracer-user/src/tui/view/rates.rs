//! Pane 3: events per second per probe kind as sparklines, losses, ring fill.

use ratatui::{
    Frame,
    layout::{Constraint, Layout, Rect},
    text::Line,
    widgets::{Block, Paragraph, Sparkline},
};

use crate::tui::app::App;

pub fn render(f: &mut Frame, area: Rect, app: &App) {
    let d = app.data();
    let block = Block::bordered().title(" Rates (events/s per probe, one sample per tick) ");
    let inner = block.inner(area);
    f.render_widget(block, area);
    let [summary, rest] = Layout::vertical([Constraint::Length(2), Constraint::Fill(1)]).areas(inner);
    let text = match &d.tick {
        Some(t) => vec![
            Line::from(format!(
                "received {} events │ lost {} (ring full) │ missed {} (kernel recursion protection) │ violations {}",
                t.events_received, t.lost, t.missed, t.verdicts
            )),
            Line::from(match d.started.as_ref().map(|s| s.ring_bytes) {
                Some(b) if b > 0 => format!("ring buffer {} KiB, fullest drain since last tick {:.0}%", b / 1024, (t.ring_fill * 100.0).min(100.0)),
                _ => "ring buffer: not applicable (replay)".to_string(),
            }),
        ],
        None => vec![Line::from("waiting for the first sample…")],
    };
    f.render_widget(Paragraph::new(text), summary);
    let mut kinds: Vec<(&str, Vec<u64>)> = d.rates.iter().map(|(k, q)| (*k, q.iter().copied().collect())).collect();
    kinds.push(("lost", d.lost_rate.iter().copied().collect()));
    let rows = Layout::vertical(kinds.iter().map(|_| Constraint::Length(1))).split(rest);
    for ((kind, samples), row) in kinds.iter().zip(rows.iter()) {
        let [label, spark] = Layout::horizontal([Constraint::Length(44), Constraint::Fill(1)]).areas(*row);
        let now = samples.last().copied().unwrap_or(0);
        f.render_widget(Paragraph::new(format!("{kind:<32} {now:>9}/s")), label);
        // The newest samples that fit, right-aligned like htop's graphs.
        let fit = &samples[samples.len().saturating_sub(usize::from(spark.width))..];
        f.render_widget(Sparkline::default().data(fit), spark);
    }
}
