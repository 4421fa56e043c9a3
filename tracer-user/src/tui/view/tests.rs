//! Every pane drawn from the replayed fixture into a TestBackend and compared with its
//! snapshot (src/tui/view/snapshots). The fixture and the feed are deterministic, so are these.

use ratatui::{Terminal, backend::TestBackend};

use crate::tui::{
    app::{Action, App, Prompt, tests::fed},
    feed::Update,
};

const FIXTURE: &str = include_str!("../../../tests/fixtures/dashboard.jsonl");

fn screen(app: &mut App) -> String {
    let mut t = Terminal::new(TestBackend::new(110, 28)).unwrap();
    t.draw(|f| super::draw(f, app)).unwrap();
    t.backend().to_string()
}

#[test]
fn violations_pane() {
    insta::assert_snapshot!(screen(&mut fed()));
}

#[test]
fn detail_view_with_stack() {
    let mut app = fed();
    app.handle(Action::Bottom);
    app.handle(Action::Open);
    let s = screen(&mut app);
    assert!(s.contains("my_module_walk+0x44/0x90 [vmalock_test]"), "{s}");
    insta::assert_snapshot!(s);
}

#[test]
fn detail_view_with_lock_order() {
    let mut app = fed();
    app.handle(Action::Open);
    insta::assert_snapshot!(screen(&mut app));
}

#[test]
fn tasks_pane() {
    // Stopped at the first tick that finds locks held (the fixture releases all by its end).
    let mut app = App::new();
    let mut holding = false;
    crate::tui::feed::replay(FIXTURE.as_bytes(), "dashboard.jsonl", 1_000, |u| {
        if !holding {
            holding = matches!(&u, Update::Tick(t) if !t.held.is_empty());
            app.update(u);
        }
    })
    .unwrap();
    assert!(holding);
    app.handle(Action::Pane(1));
    insta::assert_snapshot!(screen(&mut app));
}

#[test]
fn rates_pane() {
    let mut app = fed();
    app.handle(Action::Pane(2));
    insta::assert_snapshot!(screen(&mut app));
}

#[test]
fn rules_pane() {
    let mut app = fed();
    app.handle(Action::Pane(3));
    insta::assert_snapshot!(screen(&mut app));
}

#[test]
fn help_over_a_filtered_frozen_view() {
    let mut app = fed();
    app.handle(Action::CycleRule);
    app.handle(Action::ToggleFreeze);
    app.handle(Action::ToggleHelp);
    insta::assert_snapshot!(screen(&mut app));
}

#[test]
fn search_prompt_in_the_footer() {
    let mut app = fed();
    app.handle(Action::Prompt(Prompt::Search));
    "walk".chars().for_each(|c| app.handle(Action::Input(c)));
    insta::assert_snapshot!(screen(&mut app));
}

#[test]
fn detail_view_shows_a_lock_order_verdicts_own_chain() {
    use crate::model::{ChainLink, TaskRef};
    let mut v = fed().groups()[0].last.clone();
    v.rule = "lock-order";
    let task = TaskRef { tid: 7, tgid: 7, comm: "inverter".into() };
    v.chain = vec![ChainLink {
        from: "i_mmap_rwsem".into(),
        to: "mmap_lock".into(),
        deps: vec!["-(ER)->"],
        task,
        ts_ns: 1,
        held_take: "write",
        taken_take: "read",
        held_stack_id: None,
        taken_stack_id: None,
        held_stack: vec!["vt_i_mmap_then_mmap+0x10 [vmalock_test]".into()],
        taken_stack: vec![],
        contradicts: Some("mmap_lock before i_mmap_rwsem (mm/rmap.c)".into()),
    }];
    let mut app = App::new();
    app.update(Update::Verdicts(vec![v]));
    app.handle(Action::Open);
    // Tall enough for the whole detail, chain included.
    let mut t = Terminal::new(TestBackend::new(110, 80)).unwrap();
    t.draw(|f| super::draw(f, &mut app)).unwrap();
    let s = t.backend().to_string();
    assert!(s.contains("i_mmap_rwsem"), "{s}");
    assert!(s.contains("vt_i_mmap_then_mmap+0x10"), "{s}");
}

#[test]
fn tasks_pane_lists_locks_of_every_class_a_task_holds() {
    use crate::model::TaskRef;
    let task = TaskRef { tid: 9, tgid: 8, comm: "mapper".into() };
    let tick = crate::observe::Tick {
        held_other: vec![(task, vec!["i_mmap_rwsem 0x3 write".into()])],
        ..Default::default()
    };
    let mut app = App::new();
    app.update(Update::Tick(tick));
    app.handle(Action::Pane(1));
    let s = screen(&mut app);
    assert!(s.contains("mapper") && s.contains("i_mmap_rwsem 0x3 write"), "{s}");
}
