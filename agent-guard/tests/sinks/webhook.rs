//! The webhook against a receiver that goes away, refuses, loses answers, and comes back;
//! and the spool's bound.
use std::{
    collections::{BTreeMap, BTreeSet},
    path::Path,
    time::Duration,
};

use agent_guard::sinks::SinkSet;

use crate::{
    collect_overflows, event, health_of,
    receiver::{Mode, Receiver},
    sequence_of, sinks, wait_for,
};

const NAME: &str = "siem";
const PATIENCE: Duration = Duration::from_secs(60);

fn start(receiver: &Receiver, spool_root: &Path, extra: &str) -> SinkSet {
    let configs = sinks(&format!(
        r#"
        [[sink]]
        type = "webhook"
        name = "{NAME}"
        url = "{}"
        batch_max = 40
        batch_wait_ms = 20
        timeout_ms = 2000
        {extra}
        "#,
        receiver.url()
    ));
    SinkSet::start(&configs, spool_root).unwrap()
}

fn submit(set: &SinkSet, sequences: std::ops::RangeInclusive<u64>) {
    for n in sequences {
        set.submit(&event(n));
    }
}

/// Each sequence received, first copy; panics on a duplicate that differs from it.
fn received(receiver: &Receiver) -> BTreeMap<u64, Vec<u8>> {
    let mut first = BTreeMap::new();
    for line in receiver.lines() {
        assert_eq!(line.last(), Some(&b'\n'), "a line without its newline");
        let sequence = sequence_of(&line);
        let copy = first.entry(sequence).or_insert_with(|| line.clone());
        assert_eq!(
            copy, &line,
            "sequence {sequence} arrived twice with different bytes"
        );
    }
    first
}

fn has_all(receiver: &Receiver, total: u64) -> bool {
    let got = received(receiver);
    (1..=total).all(|n| got.contains_key(&n))
}

#[test]
fn outage_and_restart_lose_nothing() {
    let spool_root = tempfile::tempdir().unwrap();
    let mut receiver = Receiver::start(Mode::Accept);
    let set = start(&receiver, spool_root.path(), "");
    submit(&set, 1..=100);
    wait_for("the first 100", PATIENCE, || has_all(&receiver, 100));
    wait_for("their acknowledgement", PATIENCE, || {
        health_of(&set, NAME).delivered == 100
    });

    // The receiver goes away; the daemon keeps submitting, then restarts.
    receiver.stop();
    submit(&set, 101..=200);
    wait_for("the outage to be noticed", PATIENCE, || {
        let health = health_of(&set, NAME);
        health.last_error.is_some() && health.backlog == 100
    });
    let health = health_of(&set, NAME);
    assert!(health.spool_bytes > 0, "{health:?}");
    assert!(
        health
            .last_error
            .as_deref()
            .unwrap()
            .contains("cannot connect"),
        "{health:?}"
    );
    drop(set);

    let set = start(&receiver, spool_root.path(), "");
    assert_eq!(health_of(&set, NAME).backlog, 100, "the spool survived");
    receiver.restart();
    submit(&set, 201..=300);
    wait_for("all 300", PATIENCE, || has_all(&receiver, 300));
    wait_for("the backlog to drain", PATIENCE, || {
        health_of(&set, NAME).backlog == 0
    });
    let got = received(&receiver);
    assert_eq!(
        got.keys().copied().collect::<Vec<_>>(),
        (1..=300).collect::<Vec<_>>()
    );
    for (sequence, line) in &got {
        assert_eq!(
            line.strip_suffix(b"\n").unwrap(),
            event(*sequence).text.as_bytes()
        );
    }
    let health = health_of(&set, NAME);
    assert_eq!((health.delivered, health.dropped), (200, 0), "{health:?}");
    assert_eq!(health.last_error, None);
    assert!(set.take_overflows().is_empty());
    set.shutdown(Duration::from_secs(5));
}

#[test]
fn lost_answers_are_sent_again_byte_for_byte() {
    let spool_root = tempfile::tempdir().unwrap();
    // The first two POSTs arrive, but their answers are lost.
    let receiver = Receiver::start(Mode::LoseAnswer(2));
    let set = start(&receiver, spool_root.path(), "");
    submit(&set, 1..=120);
    wait_for("all 120", PATIENCE, || has_all(&receiver, 120));
    wait_for("their acknowledgement", PATIENCE, || {
        health_of(&set, NAME).backlog == 0
    });
    let lines = receiver.lines();
    assert!(lines.len() > 120, "no duplicates: {}", lines.len());
    // `received` already checked each duplicate against the first copy.
    assert_eq!(received(&receiver).len(), 120);
    set.shutdown(Duration::from_secs(5));
}

#[test]
fn a_refusing_receiver_is_retried_until_it_accepts() {
    let spool_root = tempfile::tempdir().unwrap();
    let receiver = Receiver::start(Mode::Fail);
    let set = start(&receiver, spool_root.path(), "");
    submit(&set, 1..=50);
    wait_for("three refusals", PATIENCE, || {
        receiver.record.lock().unwrap().refused >= 3
    });
    let health = health_of(&set, NAME);
    assert_eq!(health.delivered, 0);
    assert_eq!(health.backlog, 50);
    assert!(
        health
            .last_error
            .as_deref()
            .unwrap()
            .contains("answered 500"),
        "{health:?}"
    );
    receiver.set_mode(Mode::Accept);
    wait_for("all 50", PATIENCE, || has_all(&receiver, 50));
    wait_for("their acknowledgement", PATIENCE, || {
        health_of(&set, NAME).delivered == 50
    });
    assert_eq!(health_of(&set, NAME).last_error, None);
    set.shutdown(Duration::from_secs(5));
}

#[test]
fn the_spool_bound_drops_the_oldest_and_says_so() {
    const TOTAL: u64 = 300;
    let spool_root = tempfile::tempdir().unwrap();
    let mut receiver = Receiver::down();
    let set = start(&receiver, spool_root.path(), "spool_max_bytes = 8192");
    submit(&set, 1..=TOTAL);
    // Every line is either spooled or reported dropped once the spool thread is through.
    let mut overflows = BTreeMap::new();
    wait_for("the spool to settle", PATIENCE, || {
        collect_overflows(&set, &mut overflows);
        let dropped: u64 = overflows.values().flatten().map(|o| o.dropped).sum();
        let health = health_of(&set, NAME);
        health.queued == 0 && dropped + health.backlog == TOTAL
    });
    let health = health_of(&set, NAME);
    assert!(health.spool_bytes <= 8192, "{health:?}");
    assert!(health.dropped > 0, "{health:?}");

    receiver.restart();
    wait_for("the spool to drain", PATIENCE, || {
        health_of(&set, NAME).backlog == 0
    });
    collect_overflows(&set, &mut overflows);
    let mut dropped = BTreeSet::new();
    for overflow in &overflows[NAME] {
        let range = overflow.first_sequence..=overflow.last_sequence;
        assert_eq!(
            overflow.dropped,
            range.clone().count() as u64,
            "{overflow:?}"
        );
        for n in range {
            assert!(dropped.insert(n), "{n} reported dropped twice");
        }
    }
    let delivered: BTreeSet<u64> = received(&receiver).into_keys().collect();
    assert!(
        delivered.is_disjoint(&dropped),
        "delivered and reported dropped: {:?}",
        delivered.intersection(&dropped).collect::<Vec<_>>()
    );
    let all: BTreeSet<u64> = delivered.union(&dropped).copied().collect();
    assert_eq!(all, (1..=TOTAL).collect(), "every sequence accounted for");
    // The oldest went, the newest stayed.
    assert!(dropped.contains(&1) && delivered.contains(&TOTAL));
    assert_eq!(health_of(&set, NAME).delivered, delivered.len() as u64);
    set.shutdown(Duration::from_secs(5));
}
