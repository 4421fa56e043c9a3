//! The one key table: it maps keys to actions, and the footer and the `?` help are both
//! generated from it, so they cannot disagree with what the keys do.
//!
//! Keys follow htop/bottom/gitui habits: q quits, ? helps, Tab and 1-4 switch panes, arrows or
//! j/k move, Enter opens, Esc goes back, / searches, f freezes (bottom), F-less filters by letter.

use ratatui::crossterm::event::{KeyCode, KeyEvent, KeyModifiers};

use super::app::{Action, Prompt};

pub struct Binding {
    /// How the key is written in the footer and help.
    pub keys: &'static str,
    pub action: Action,
    pub help: &'static str,
    /// The footer's word for it, for the most used ones (the footer is one line).
    pub footer: Option<&'static str>,
}

pub static KEYS: &[Binding] = &[
    Binding { keys: "q", action: Action::Quit, help: "quit (detaches the probes)", footer: Some("quit") },
    Binding { keys: "?", action: Action::ToggleHelp, help: "show or hide this help", footer: Some("help") },
    Binding { keys: "Tab", action: Action::NextPane, help: "next pane", footer: Some("pane") },
    Binding { keys: "S-Tab", action: Action::PrevPane, help: "previous pane", footer: None },
    Binding { keys: "1-4", action: Action::Pane(0), help: "violations, tasks & locks, rates, rules", footer: None },
    Binding { keys: "↑/k", action: Action::Up, help: "move up", footer: None },
    Binding { keys: "↓/j", action: Action::Down, help: "move down", footer: None },
    Binding { keys: "PgUp/PgDn", action: Action::PageUp, help: "move a page", footer: None },
    Binding { keys: "g/G", action: Action::Top, help: "first / last row", footer: None },
    Binding { keys: "Enter", action: Action::Open, help: "details of the selected violation group", footer: Some("details") },
    Binding { keys: "Esc", action: Action::Back, help: "close details or help; cancel input", footer: None },
    Binding { keys: "f", action: Action::ToggleFreeze, help: "freeze the display (ingest goes on)", footer: Some("freeze") },
    Binding { keys: "/", action: Action::Prompt(Prompt::Search), help: "search rule, site, message, task", footer: Some("search") },
    Binding { keys: "p", action: Action::Prompt(Prompt::Pid), help: "filter by pid or tid", footer: Some("pid") },
    Binding { keys: "c", action: Action::Prompt(Prompt::Comm), help: "filter by command name", footer: Some("comm") },
    Binding { keys: "r", action: Action::CycleRule, help: "filter by rule (cycles through rules seen)", footer: Some("rule") },
    Binding { keys: "x", action: Action::ClearFilters, help: "clear filters and search", footer: None },
];

/// The action for `key`; `editing` when a prompt takes the keys.
pub fn action_for(key: KeyEvent, editing: bool) -> Option<Action> {
    if key.modifiers.contains(KeyModifiers::CONTROL) && key.code == KeyCode::Char('c') {
        return Some(Action::Quit);
    }
    if editing {
        return Some(match key.code {
            KeyCode::Enter => Action::Submit,
            KeyCode::Esc => Action::Back,
            KeyCode::Backspace => Action::Backspace,
            KeyCode::Char(c) => Action::Input(c),
            _ => return None,
        });
    }
    Some(match key.code {
        KeyCode::Tab => Action::NextPane,
        KeyCode::BackTab => Action::PrevPane,
        KeyCode::Char(c @ '1'..='4') => Action::Pane(c as usize - '1' as usize),
        KeyCode::Up => Action::Up,
        KeyCode::Down => Action::Down,
        KeyCode::PageUp => Action::PageUp,
        KeyCode::PageDown => Action::PageDown,
        KeyCode::Home => Action::Top,
        KeyCode::End => Action::Bottom,
        KeyCode::Enter => Action::Open,
        KeyCode::Esc => Action::Back,
        KeyCode::Char('k') => Action::Up,
        KeyCode::Char('j') => Action::Down,
        KeyCode::Char('g') => Action::Top,
        KeyCode::Char('G') => Action::Bottom,
        KeyCode::Char(c) => return KEYS.iter().find(|b| b.keys == c.to_string()).map(|b| b.action),
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(c: KeyCode) -> KeyEvent {
        KeyEvent::new(c, KeyModifiers::NONE)
    }

    #[test]
    fn every_single_letter_binding_is_reachable() {
        for b in KEYS.iter().filter(|b| b.keys.chars().count() == 1) {
            let c = b.keys.chars().next().unwrap();
            assert_eq!(action_for(key(KeyCode::Char(c)), false), Some(b.action), "{}", b.keys);
        }
    }

    #[test]
    fn prompts_take_letters_and_ctrl_c_always_quits() {
        assert_eq!(action_for(key(KeyCode::Char('q')), true), Some(Action::Input('q')));
        assert_eq!(action_for(KeyEvent::new(KeyCode::Char('c'), KeyModifiers::CONTROL), true), Some(Action::Quit));
        assert_eq!(action_for(key(KeyCode::Char('g')), false), Some(Action::Top));
        assert_eq!(action_for(key(KeyCode::Char('3')), false), Some(Action::Pane(2)));
    }
}
