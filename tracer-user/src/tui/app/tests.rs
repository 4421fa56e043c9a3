//! App transitions, driven by the dashboard fixture replayed through the same feed as `watch --replay`.

use super::*;
use crate::tui::feed;

const FIXTURE: &str = include_str!("../../../tests/fixtures/dashboard.jsonl");

/// An app fed the whole fixture, with a tick every 10 µs of trace time.
pub(crate) fn fed() -> App {
    let mut app = App::new();
    feed::replay(FIXTURE.as_bytes(), "dashboard.jsonl", 10_000, |u| app.update(u)).unwrap();
    app
}

#[test]
fn verdicts_group_by_rule_and_site_with_counts_times_and_tasks() {
    let app = fed();
    assert_eq!(app.data().verdicts, 4);
    let groups: Vec<(&str, &str, u64)> = app.groups().iter().map(|g| (g.rule, g.site.as_str(), g.count)).collect();
    assert_eq!(
        groups,
        [("mmap-lock-balance", "mmap_lock_released", 2), ("mmap-lock-balance", "sched_process_exit", 1), ("pagewalk-lock-mode", "walk_page_range", 1)]
    );
    let g = app.groups()[0];
    assert_eq!((g.first_ns, g.last_ns), (1_000_010_500, 1_000_020_500));
    assert_eq!(g.tasks.get(&102), Some(&(100, "worker".to_string())));
    assert_eq!(app.data().ended.as_deref(), Some("end of the recording"));
    assert_eq!(app.data().edges.len(), 1);
}

#[test]
fn selection_stays_in_range_and_opens_the_selected_group() {
    let mut app = fed();
    app.handle(Action::Up);
    assert_eq!(app.selection(), 0);
    for _ in 0..10 {
        app.handle(Action::Down);
    }
    assert_eq!(app.selection(), 2, "three groups");
    app.handle(Action::Top);
    app.handle(Action::Down);
    app.handle(Action::Open);
    assert!(app.detail);
    assert_eq!(app.selected_group().unwrap().site, "sched_process_exit");
    app.handle(Action::Back);
    assert!(!app.detail);
    app.handle(Action::Bottom);
    assert_eq!(app.selected_group().unwrap().rule, "pagewalk-lock-mode");
}

#[test]
fn panes_cycle_both_ways_and_jump() {
    let mut app = App::new();
    app.handle(Action::NextPane);
    assert_eq!(app.pane, Pane::Tasks);
    app.handle(Action::PrevPane);
    app.handle(Action::PrevPane);
    assert_eq!(app.pane, Pane::Rules);
    app.handle(Action::Pane(2));
    assert_eq!(app.pane, Pane::Rates);
    // Details only open on a violation.
    app.handle(Action::Open);
    assert!(!app.detail);
}

#[test]
fn prompts_filter_by_pid_comm_and_search_and_x_clears() {
    let mut app = fed();
    app.handle(Action::Prompt(Prompt::Pid));
    for c in "200".chars() {
        app.handle(Action::Input(c));
    }
    // Typed letters go to the prompt, not to the key table.
    app.handle(Action::Input('q'));
    app.handle(Action::Backspace);
    assert!(!app.quit);
    app.handle(Action::Submit);
    assert_eq!(app.filters.pid, Some(200));
    let sites: Vec<&str> = app.groups().iter().map(|g| g.site.as_str()).collect();
    assert_eq!(sites, ["sched_process_exit", "walk_page_range"], "pid matches the tgid of walker");

    app.handle(Action::ClearFilters);
    app.handle(Action::Prompt(Prompt::Comm));
    "work".chars().for_each(|c| app.handle(Action::Input(c)));
    app.handle(Action::Submit);
    assert_eq!(app.groups().len(), 1);
    assert_eq!(app.groups()[0].tasks.keys().copied().collect::<Vec<_>>(), [102]);

    app.handle(Action::ClearFilters);
    app.handle(Action::Prompt(Prompt::Search));
    "WRLOCK".chars().for_each(|c| app.handle(Action::Input(c)));
    app.handle(Action::Submit);
    assert_eq!(app.groups().len(), 1, "search is case-insensitive over the message");
    assert_eq!(app.groups()[0].rule, "pagewalk-lock-mode");

    // Esc cancels a prompt without changing the filter.
    app.handle(Action::Prompt(Prompt::Search));
    app.handle(Action::Input('z'));
    app.handle(Action::Back);
    assert_eq!(app.filters.search, "WRLOCK");
    assert!(app.prompt.is_none());

    // A pid that is not a number clears the pid filter rather than hiding everything.
    app.handle(Action::ClearFilters);
    app.handle(Action::Prompt(Prompt::Pid));
    app.handle(Action::Input('x'));
    app.handle(Action::Submit);
    assert_eq!(app.filters.pid, None);
    assert_eq!(app.groups().len(), 3);
}

#[test]
fn rule_filter_cycles_through_rules_seen_then_off() {
    let mut app = fed();
    app.handle(Action::CycleRule);
    assert_eq!(app.filters.rule, Some("mmap-lock-balance"));
    assert_eq!(app.groups().len(), 2);
    app.handle(Action::CycleRule);
    assert_eq!(app.filters.rule, Some("pagewalk-lock-mode"));
    app.handle(Action::CycleRule);
    assert_eq!(app.filters.rule, None);
    assert_eq!(app.groups().len(), 3);
}

#[test]
fn freeze_holds_the_display_while_updates_keep_coming() {
    let mut app = fed();
    app.handle(Action::ToggleFreeze);
    assert!(app.frozen());
    let extra = app.data().groups[0].last.clone();
    app.update(Update::Verdicts(vec![extra.clone(), extra]));
    assert_eq!(app.data().verdicts, 4, "frozen display");
    app.handle(Action::ToggleFreeze);
    assert_eq!(app.data().verdicts, 6, "nothing was lost while frozen");
}

#[test]
fn ticks_become_per_second_rates() {
    let mut app = App::new();
    let tick = |ts_ns, n, lost| Tick { ts_ns, seen: vec![("mmap_lock_released", n)], lost, ..Tick::default() };
    app.update(Update::Tick(tick(1_000_000_000, 100, 0)));
    app.update(Update::Tick(tick(1_500_000_000, 600, 5)));
    app.update(Update::Tick(tick(2_500_000_000, 800, 5)));
    assert_eq!(app.data().rates["mmap_lock_released"], [1000, 200]);
    assert_eq!(app.data().lost_rate, [10, 0]);
}

#[test]
fn help_toggles_and_esc_closes_it_first() {
    let mut app = fed();
    app.handle(Action::Open);
    app.handle(Action::ToggleHelp);
    assert!(app.help && app.detail);
    app.handle(Action::Back);
    assert!(!app.help && app.detail);
    app.handle(Action::Quit);
    assert!(app.quit);
}

#[test]
fn movement_keys_scroll_the_detail_view() {
    let mut app = fed();
    app.handle(Action::Open);
    app.handle(Action::Down);
    app.handle(Action::Down);
    assert_eq!((app.detail_scroll, app.selection()), (2, 0), "scrolls, does not move the selection");
    app.handle(Action::Top);
    assert_eq!(app.detail_scroll, 0);
    app.handle(Action::Back);
    app.handle(Action::Down);
    assert_eq!(app.selection(), 1);
}
