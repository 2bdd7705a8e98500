//! The fault suite's checks that use revisions: the store's own account of what happened
//! (every change, read back at the end of a run by a watch from revision 1) is held against
//! what the clients were told.
//!
//! - **No acknowledged write lost**: each acknowledged put, successful compare-and-swap
//!   and delete is in the record, at the revision its response reported.
//! - **Nothing invented**: every value in the record was written by some client, once.
//! - **Revisions**: the record has every revision from 2 to the last, none twice; a read
//!   answered at revision R saw exactly the record's state at R (this covers serializable
//!   reads too, which may be stale but never wrong); a compare-and-swap succeeded exactly
//!   when its comparison held just before its revision.
//! - **Real time**: an operation that began after another ended is at the same or a later
//!   revision, and strictly later when it wrote.
//! - **Sessions**: a member that a client talks to alone never answers it at a lower
//!   revision than before, nor misses the client's own writes, unless it was restarted in
//!   between.
//! - **Watches**: each stream delivered, in order and without duplicates, exactly the
//!   record's changes under its prefix from its start revision to the last one it delivered
//!   (so a resumed watch misses nothing and repeats nothing), each event's `prev_kv` is the
//!   record's value just before it, and a put is marked as creating its key exactly when the
//!   key was absent before.
//!
//! Unknown writes found in the record took effect at that revision; unknown writes not in it
//! never did. The functions return one line per violation.

use std::collections::{BTreeMap, HashMap, HashSet};

use crate::history::{Event, NEVER, Operation, Request, Response, Time, WatchSession};

/// The store's record of changes, indexed for replay.
pub struct Record<'a> {
    events: &'a [Event],
    /// Per key: (revision, value) in revision order.
    by_key: HashMap<&'a str, Vec<(i64, Option<&'a str>)>>,
    /// Written value → its event.
    by_value: HashMap<&'a str, &'a Event>,
    pub last_revision: i64,
}

impl<'a> Record<'a> {
    /// Indexes `events`, reporting into `violations` what makes the record itself wrong
    /// (a value written twice, revisions missing, repeated or going back).
    pub fn new(events: &'a [Event], last_revision: i64, violations: &mut Vec<String>) -> Record<'a> {
        let mut by_key: HashMap<&str, Vec<(i64, Option<&str>)>> = HashMap::new();
        let mut by_value: HashMap<&str, &Event> = HashMap::new();
        let mut previous = 1;
        for e in events {
            if e.revision < previous {
                violations.push(format!("record goes back from revision {previous} to {}", e.revision));
            } else if e.revision > previous + 1 {
                violations.push(format!("record skips revisions {}..{}", previous + 1, e.revision - 1));
            }
            previous = previous.max(e.revision);
            by_key.entry(&e.key).or_default().push((e.revision, e.value.as_deref()));
            if let Some(v) = &e.value
                && by_value.insert(v, e).is_some()
            {
                violations.push(format!("value {v:?} written twice (second at revision {})", e.revision));
            }
        }
        if previous != last_revision {
            violations.push(format!(
                "record ends at revision {previous}, the store's revision is {last_revision}"
            ));
        }
        let mut seen_rev_key = HashSet::new();
        for e in events {
            if !seen_rev_key.insert((e.revision, &e.key)) {
                violations.push(format!("key {:?} changed twice at revision {}", e.key, e.revision));
            }
        }
        Record {
            events,
            by_key,
            by_value,
            last_revision,
        }
    }

    /// The value of `key` at `revision`.
    pub fn value_at(&self, key: &str, revision: i64) -> Option<&'a str> {
        let changes = self.by_key.get(key)?;
        let i = changes.partition_point(|(r, _)| *r <= revision);
        i.checked_sub(1).and_then(|i| changes[i].1)
    }

    /// The event that wrote `value`.
    pub fn written(&self, value: &str) -> Option<&'a Event> {
        self.by_value.get(value).copied()
    }

    pub fn events(&self) -> &'a [Event] {
        self.events
    }
}

/// Checks the client history against the record. `traffic_prefix` is the key prefix the
/// clients wrote under (other keys in the record, such as lease keys, are not theirs).
pub fn check_history(history: &[Operation], record: &Record<'_>, traffic_prefix: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut written_values = HashSet::new();
    // Deletes of a key that no acknowledged delete explains, allowed by unknown ones.
    let mut unknown_deletes: HashMap<&str, usize> = HashMap::new();
    let mut acked_deletes: HashMap<&str, HashSet<i64>> = HashMap::new();
    // (call, ret, revision, created a revision, index in `history`) for the real-time check.
    let mut timed: Vec<Timed> = Vec::new();

    for (index, op) in history.iter().enumerate() {
        let key = op.request.key();
        if let Some(v) = op.request.written_value() {
            written_values.insert(v);
        }
        let describe = || describe_op(op);
        if let Some(rev) = op.response.revision()
            && rev > record.last_revision
        {
            out.push(format!(
                "{}: revision beyond the store's last ({})",
                describe(),
                record.last_revision
            ));
            continue;
        }
        match (&op.request, &op.response) {
            (Request::Get { serializable, .. }, Response::Get { value, revision }) => {
                let expected = record.value_at(key, *revision);
                if value.as_deref() != expected {
                    out.push(format!("{}: the record has {expected:?} at that revision", describe()));
                }
                if !serializable {
                    timed.push((op.call, op.ret, *revision, false, index));
                }
            }
            (Request::Put { value, .. }, Response::Put { revision })
            | (
                Request::Cas { value, .. },
                Response::Cas {
                    succeeded: true,
                    revision,
                },
            ) => {
                match record.written(value) {
                    None => out.push(format!("{}: acknowledged write lost (not in the record)", describe())),
                    Some(e) if e.revision != *revision || e.key != key => out.push(format!(
                        "{}: the record has it at revision {} on {:?}",
                        describe(),
                        e.revision,
                        e.key
                    )),
                    Some(_) => timed.push((op.call, op.ret, *revision, true, index)),
                }
                if let Request::Cas { expect, .. } = &op.request {
                    let before = record.value_at(key, revision - 1);
                    if before != expect.as_deref() {
                        out.push(format!("{}: succeeded, but the key held {before:?} before", describe()));
                    }
                }
            }
            (
                Request::Cas { value, expect, .. },
                Response::Cas {
                    succeeded: false,
                    revision,
                },
            ) => {
                if let Some(e) = record.written(value) {
                    out.push(format!(
                        "{}: failed, but the record has it at revision {}",
                        describe(),
                        e.revision
                    ));
                }
                let now = record.value_at(key, *revision);
                if now == expect.as_deref() {
                    out.push(format!(
                        "{}: failed, but the key held {now:?} at that revision",
                        describe()
                    ));
                }
                timed.push((op.call, op.ret, *revision, false, index));
            }
            (Request::Delete { .. }, Response::Delete { deleted, revision }) => {
                if *deleted {
                    let here = record
                        .by_key
                        .get(key)
                        .and_then(|c| c.iter().find(|(r, _)| r == revision));
                    match here {
                        Some((_, None)) => {
                            acked_deletes.entry(key).or_default().insert(*revision);
                        }
                        _ => out.push(format!("{}: acknowledged delete not in the record", describe())),
                    }
                    if record.value_at(key, revision - 1).is_none() {
                        out.push(format!("{}: deleted a key that was absent", describe()));
                    }
                } else if record.value_at(key, *revision).is_some() {
                    out.push(format!("{}: deleted nothing, but the key existed", describe()));
                }
                timed.push((op.call, op.ret, *revision, *deleted, index));
            }
            (Request::Delete { .. }, Response::Unknown) => *unknown_deletes.entry(key).or_default() += 1,
            (Request::Put { value, .. } | Request::Cas { value, .. }, Response::Unknown) => {
                // Took effect at the recorded revision, or never.
                if let Some(e) = record.written(value) {
                    timed.push((op.call, NEVER, e.revision, true, index));
                }
            }
            (request, response) => out.push(format!(
                "client {}: response {response:?} does not answer {request:?}",
                op.client
            )),
        }
    }

    // Every change under the traffic prefix comes from a client.
    let mut unexplained: BTreeMap<&str, usize> = BTreeMap::new();
    for e in record.events() {
        if !e.key.starts_with(traffic_prefix) {
            continue;
        }
        match &e.value {
            Some(v) if !written_values.contains(v.as_str()) => out.push(format!(
                "revision {}: {:?} = {v:?} was written by no client",
                e.revision, e.key
            )),
            None if !acked_deletes
                .get(e.key.as_str())
                .is_some_and(|r| r.contains(&e.revision)) =>
            {
                *unexplained.entry(&e.key).or_default() += 1
            }
            _ => {}
        }
    }
    for (key, n) in unexplained {
        let allowed = unknown_deletes.get(key).copied().unwrap_or(0);
        if n > allowed {
            out.push(format!(
                "{key:?} was deleted {n} times that no acknowledged delete explains ({allowed} unknown deletes)"
            ));
        }
    }

    out.extend(check_real_time(&mut timed, |i| describe_op(&history[i])));
    out
}

/// An operation in a violation's message: its client, request and response.
fn describe_op(op: &Operation) -> String {
    format!("client {} {:?} → {:?}", op.client, op.request, op.response)
}

/// An operation as the real-time check sees it: call and return times, the revision it saw
/// or made, whether it made it, and where it is in the history.
type Timed = (u64, u64, i64, bool, usize);

/// If A returned before B was sent, B's revision is at least A's, and greater when B wrote.
/// A violation names both operations (`describe` gives one by its history index: the client,
/// so the member a pinned client talks to, the request and the response).
fn check_real_time(ops: &mut [Timed], describe: impl Fn(usize) -> String) -> Vec<String> {
    let mut out = Vec::new();
    let mut by_ret: Vec<(u64, i64, usize)> = ops.iter().filter(|o| o.1 != NEVER).map(|o| (o.1, o.2, o.4)).collect();
    by_ret.sort_unstable();
    ops.sort_unstable_by_key(|o| o.0);
    let mut done = 0;
    // (revision, return time, index) of the highest revision returned so far.
    let mut highest = (0i64, 0u64, usize::MAX);
    for &(call, _, revision, wrote, index) in ops.iter() {
        while done < by_ret.len() && by_ret[done].0 < call {
            if by_ret[done].1 > highest.0 {
                highest = (by_ret[done].1, by_ret[done].0, by_ret[done].2);
            }
            done += 1;
        }
        let behind = if wrote {
            revision <= highest.0
        } else {
            revision < highest.0
        };
        if behind {
            out.push(format!(
                "an operation sent at {call} ns has revision {revision}, but one that finished at {} ns before it had {} ({} after {})",
                highest.1,
                highest.0,
                describe(index),
                describe(highest.2)
            ));
        }
    }
    out
}

/// Session guarantees of a client that talks to one member only: each answer is at a
/// revision at least as high as every earlier answer that member gave the client, and
/// higher when it wrote, as long as the member was not started again in between. So a
/// serializable read sees the client's own earlier writes and never goes back, as on etcd,
/// whose members answer only what they have applied. Linearizable operations are held to
/// more by the real-time check; serializable reads are held to this only here.
///
/// `starts` lists when each member process was started, as (member, time). A member
/// started again may come back behind (with what it had synced, or as a new member), so
/// an answer is compared only with answers of the same life, and one whose request
/// spanned a start is left out. Returns how many answers were held to an earlier one, and
/// the violations.
pub fn check_sessions(history: &[Operation], starts: &[(usize, Time)]) -> (usize, Vec<String>) {
    let life = |member: usize, at: Time| starts.iter().filter(|&&(m, t)| m == member && t <= at).count();
    let mut by_client: BTreeMap<usize, Vec<(&Operation, usize, i64)>> = BTreeMap::new();
    for op in history {
        if let (Some(member), Some(revision)) = (op.member, op.response.revision()) {
            by_client.entry(op.client).or_default().push((op, member, revision));
        }
    }
    let (mut checked, mut out) = (0, Vec::new());
    for ops in by_client.values_mut() {
        ops.sort_by_key(|(op, ..)| op.call);
        // The highest answer so far in the member's current life: (life, revision, operation).
        let mut floor: Option<(usize, i64, &Operation)> = None;
        for &(op, member, revision) in ops.iter() {
            let here = life(member, op.call);
            if here != life(member, op.ret) {
                continue;
            }
            match floor {
                Some((l, highest, before)) if l == here => {
                    checked += 1;
                    let behind = if op.response.changed() {
                        revision <= highest
                    } else {
                        revision < highest
                    };
                    if behind {
                        out.push(format!(
                            "m{member} went back from revision {highest} to {revision} for one client, without a restart ({} after {})",
                            describe_op(op),
                            describe_op(before)
                        ));
                    }
                    if revision > highest {
                        floor = Some((here, revision, op));
                    }
                }
                _ => floor = Some((here, revision, op)),
            }
        }
    }
    (checked, out)
}

/// Checks each watch stream against the record.
pub fn check_watches(sessions: &[WatchSession], record: &Record<'_>) -> Vec<String> {
    let mut out = Vec::new();
    for s in sessions {
        let who = format!("watch of client {} from revision {}", s.client, s.start_revision);
        let mut last = (0i64, String::new());
        for e in &s.events {
            if (e.revision, &e.key) <= (last.0, &last.1) {
                out.push(format!(
                    "{who}: event at revision {} {:?} after {} {:?} (out of order or repeated)",
                    e.revision, e.key, last.0, last.1
                ));
            }
            last = (e.revision, e.key.clone());
        }
        for (e, (prev, created)) in s.events.iter().zip(&s.before) {
            let expected = record.value_at(&e.key, e.revision - 1);
            if prev.as_deref() != expected {
                out.push(format!(
                    "{who}: event at revision {} on {:?} carries prev_kv {prev:?}, the record has {expected:?}",
                    e.revision, e.key
                ));
            }
            let creates = e.value.is_some() && expected.is_none();
            if *created != creates {
                out.push(format!(
                    "{who}: event at revision {} on {:?} says created={created}, the record says {creates}",
                    e.revision, e.key
                ));
            }
        }
        let Some(end) = s.events.last().map(|e| e.revision) else {
            continue;
        };
        let expected: Vec<&Event> = record
            .events()
            .iter()
            .filter(|e| e.key.starts_with(&s.prefix) && e.revision >= s.start_revision && e.revision <= end)
            .collect();
        let got: Vec<&Event> = s.events.iter().collect();
        if got != expected {
            let missing = expected.iter().find(|e| !got.contains(e));
            let extra = got.iter().find(|e| !expected.contains(e));
            out.push(format!(
                "{who}: delivered {} events up to revision {end}, the record has {} (first missing {missing:?}, first unexpected {extra:?})",
                got.len(),
                expected.len()
            ));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(revision: i64, key: &str, value: Option<&str>) -> Event {
        Event {
            revision,
            key: key.into(),
            value: value.map(Into::into),
        }
    }

    fn op(request: Request, response: Response, call: u64, ret: u64) -> Operation {
        Operation {
            client: 0,
            member: None,
            request,
            response,
            call,
            ret,
        }
    }

    fn put(k: &str, v: &str) -> Request {
        Request::Put {
            key: k.into(),
            value: v.into(),
        }
    }

    fn get(k: &str) -> Request {
        Request::Get {
            key: k.into(),
            serializable: true,
        }
    }

    fn events() -> Vec<Event> {
        vec![ev(2, "k", Some("a")), ev(3, "k", Some("b")), ev(4, "j", Some("c"))]
    }

    #[test]
    fn a_consistent_history_passes() {
        let events = events();
        let mut v = Vec::new();
        let record = Record::new(&events, 4, &mut v);
        let h = [
            op(put("k", "a"), Response::Put { revision: 2 }, 0, 1),
            op(put("k", "b"), Response::Unknown, 2, NEVER),
            op(
                get("k"),
                Response::Get {
                    value: Some("b".into()),
                    revision: 3,
                },
                5,
                6,
            ),
            op(put("j", "c"), Response::Put { revision: 4 }, 7, 8),
            op(put("j", "lost-but-unknown"), Response::Unknown, 9, NEVER),
        ];
        v.extend(check_history(&h, &record, ""));
        assert!(v.is_empty(), "{v:?}");
    }

    #[test]
    fn a_lost_acknowledged_write_is_reported() {
        let events = events();
        let mut v = Vec::new();
        let record = Record::new(&events, 4, &mut v);
        let h = [op(put("k", "z"), Response::Put { revision: 4 }, 0, 1)];
        let v = check_history(&h, &record, "");
        assert!(v.iter().any(|l| l.contains("acknowledged write lost")), "{v:?}");
    }

    #[test]
    fn a_read_that_disagrees_with_its_revision_is_reported() {
        let events = events();
        let mut v = Vec::new();
        let record = Record::new(&events, 4, &mut v);
        let h = [op(
            get("k"),
            Response::Get {
                value: Some("a".into()),
                revision: 3,
            },
            0,
            1,
        )];
        // (A prefix no event is under: only the read is judged.)
        let v = check_history(&h, &record, "other/");
        assert_eq!(v.len(), 1, "{v:?}");
    }

    #[test]
    fn going_back_in_revision_after_a_completed_operation_is_reported() {
        let name = |i: usize| format!("op {i}");
        let mut ops = vec![(0, 10, 5, false, 0), (11, 12, 4, false, 1)];
        let v = check_real_time(&mut ops, name);
        assert_eq!(v.len(), 1);
        assert!(v[0].ends_with("(op 1 after op 0)"), "{v:?}");
        // Same revision is fine for a read, not for a write.
        let mut ops = vec![(0, 10, 5, false, 0), (11, 12, 5, false, 1)];
        assert!(check_real_time(&mut ops, name).is_empty());
        let mut ops = vec![(0, 10, 5, false, 0), (11, 12, 5, true, 1)];
        assert_eq!(check_real_time(&mut ops, name).len(), 1);
    }

    #[test]
    fn a_member_going_back_for_one_client_is_reported_unless_it_restarted() {
        let on = |member: usize, request: Request, response: Response, call: u64, ret: u64| Operation {
            member: Some(member),
            ..op(request, response, call, ret)
        };
        let read = |revision: i64| Response::Get { value: None, revision };
        // Its own write, then a serializable read on the same member that misses it.
        let h = [
            on(1, put("k", "a"), Response::Put { revision: 5 }, 0, 10),
            on(1, get("k"), read(4), 20, 30),
        ];
        let (_, v) = check_sessions(&h, &[(1, 0)]);
        assert_eq!(v.len(), 1, "{v:?}");
        assert!(v[0].starts_with("m1 went back from revision 5 to 4"), "{v:?}");
        // The same read at the write's revision, or later, is fine; a write is not.
        let h = [
            on(1, put("k", "a"), Response::Put { revision: 5 }, 0, 10),
            on(1, get("k"), read(5), 20, 30),
            on(1, get("k"), read(7), 40, 50),
            on(1, put("k", "b"), Response::Put { revision: 7 }, 60, 70),
        ];
        let (_, v) = check_sessions(&h, &[(1, 0)]);
        assert_eq!(v.len(), 1, "{v:?}");
        assert!(v[0].contains("from revision 7 to 7"), "{v:?}");
        // A restart of that member in between, or during the read, excuses it.
        let h = [
            on(1, put("k", "a"), Response::Put { revision: 5 }, 0, 10),
            on(1, get("k"), read(4), 20, 30),
        ];
        assert!(check_sessions(&h, &[(1, 0), (1, 15)]).1.is_empty());
        assert!(check_sessions(&h, &[(1, 0), (1, 25)]).1.is_empty());
        // A restart of another member does not; nor does a client without a member.
        let (checked, v) = check_sessions(&h, &[(1, 0), (2, 15)]);
        assert_eq!((checked, v.len()), (1, 1), "{v:?}");
        let spread: Vec<Operation> = h
            .iter()
            .map(|o| Operation {
                member: None,
                ..o.clone()
            })
            .collect();
        assert_eq!(check_sessions(&spread, &[(1, 0)]), (0, vec![]));
        // Answers after a restart are held to that life's own answers.
        let h = [
            on(1, get("k"), read(9), 0, 10),
            on(1, get("k"), read(4), 20, 30),
            on(1, get("k"), read(3), 40, 50),
        ];
        let (checked, v) = check_sessions(&h, &[(1, 0), (1, 15)]);
        assert_eq!(checked, 1, "only the last answer has an earlier one of its life");
        assert_eq!(v.len(), 1, "{v:?}");
        assert!(v[0].contains("from revision 4 to 3"), "{v:?}");
    }

    #[test]
    fn record_gaps_and_phantom_values_are_reported() {
        let events = vec![ev(2, "k", Some("a")), ev(4, "k", Some("b"))];
        let mut v = Vec::new();
        let record = Record::new(&events, 4, &mut v);
        assert!(v.iter().any(|l| l.contains("skips revisions 3..3")), "{v:?}");
        let h = [op(put("k", "a"), Response::Put { revision: 2 }, 0, 1)];
        let v = check_history(&h, &record, "");
        assert!(v.iter().any(|l| l.contains("written by no client")), "{v:?}");
    }

    #[test]
    fn watches_must_deliver_exactly_the_record() {
        let events = events();
        let mut v = Vec::new();
        let record = Record::new(&events, 4, &mut v);
        let good = WatchSession {
            client: 0,
            prefix: "k".into(),
            start_revision: 3,
            events: vec![ev(3, "k", Some("b"))],
            before: vec![(Some("a".into()), false)],
        };
        assert!(check_watches(std::slice::from_ref(&good), &record).is_empty());
        let gap = WatchSession {
            start_revision: 2,
            ..good.clone()
        };
        assert_eq!(check_watches(&[gap], &record).len(), 1);
        let repeated = WatchSession {
            events: vec![ev(3, "k", Some("b")), ev(3, "k", Some("b"))],
            before: vec![(Some("a".into()), false); 2],
            ..good.clone()
        };
        assert_eq!(check_watches(&[repeated], &record).len(), 2);
        // A wrong prev_kv, or a put marked as creating a key that existed.
        let wrong_prev = WatchSession {
            before: vec![(None, false)],
            ..good.clone()
        };
        assert_eq!(check_watches(&[wrong_prev], &record).len(), 1);
        let wrong_create = WatchSession {
            before: vec![(Some("a".into()), true)],
            ..good
        };
        assert_eq!(check_watches(&[wrong_create], &record).len(), 1);
    }
}
