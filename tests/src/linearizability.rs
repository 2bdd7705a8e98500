//! A linearizability checker for the fault suite's histories: Wing and Gong's search with
//! Lowe's memoisation (the algorithm porcupine implements), over a register model per key.
//!
//! Every operation here touches one key, and a register per key is independent of the
//! others, so the history is checked key by key (linearizability is compositional). The
//! search walks the history's call and return events in time order and tries to place each
//! pending call at the current point ("linearize" it) if the model accepts its response;
//! reaching the return of a call it has not placed means the last choice was wrong, so it
//! backtracks. A set of (placed operations, model state) pairs already explored cuts the
//! search off where two orders lead to the same place.
//!
//! Serializable reads are not linearizable by contract and are left out (the revision
//! checks in [`crate::validate`] cover them). A write with an unknown outcome returns at
//! [`NEVER`](crate::history::NEVER): the search may place it anywhere after its call,
//! including after everything else, which is the same as never having happened.
//!
//! This checker does not use revisions at all, so it holds the store to account
//! independently of the revision numbers the store itself reports.

use std::collections::{BTreeMap, HashMap, HashSet};

use crate::history::{Operation, Request, Response};

/// The outcome of checking one key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    Linearizable,
    /// No order of the operations explains the responses; the message names the operation
    /// the search could not get past.
    Violation(String),
    /// The search gave up after `budget` steps; the history is neither proven nor refuted.
    Undecided,
}

/// What [`check`] found.
#[derive(Debug, Default)]
pub struct Summary {
    pub keys: usize,
    pub operations: usize,
    /// One line per key that is not linearizable or that the search gave up on.
    pub failures: Vec<String>,
}

/// Checks every key's history; `budget` bounds the search steps per key.
pub fn check(history: &[Operation], budget: u64) -> Summary {
    let mut by_key: BTreeMap<&str, Vec<&Operation>> = BTreeMap::new();
    for op in history {
        if matches!(op.request, Request::Get { serializable: true, .. }) {
            continue;
        }
        by_key.entry(op.request.key()).or_default().push(op);
    }
    let mut summary = Summary::default();
    for (key, ops) in by_key {
        summary.keys += 1;
        summary.operations += ops.len();
        match check_key(&ops, budget) {
            Verdict::Linearizable => {}
            Verdict::Violation(why) => summary.failures.push(format!(
                "key {key:?}: not linearizable ({} operations): {why}",
                ops.len()
            )),
            Verdict::Undecided => summary.failures.push(format!(
                "key {key:?}: undecided after {budget} search steps ({} operations)",
                ops.len()
            )),
        }
    }
    summary
}

/// The register's state: which of the key's values it holds (an index into the key's
/// value table), or None when the key is absent.
type State = Option<u32>;

/// One operation as the model sees it, values replaced by indexes.
#[derive(Debug, Clone, Copy)]
enum Step {
    Read(State),
    Write(u32),
    Delete {
        deleted: Option<bool>,
    },
    Cas {
        expect: State,
        value: u32,
        succeeded: Option<bool>,
    },
}

impl Step {
    /// The state after the step, or None when the response contradicts the state.
    fn apply(self, state: State) -> Option<State> {
        match self {
            Step::Read(seen) => (seen == state).then_some(state),
            Step::Write(v) => Some(Some(v)),
            Step::Delete { deleted } => match deleted {
                Some(d) if d != state.is_some() => None,
                _ => Some(None),
            },
            Step::Cas {
                expect,
                value,
                succeeded,
            } => {
                let holds = state == expect;
                match succeeded {
                    Some(s) if s != holds => None,
                    _ => Some(if holds { Some(value) } else { state }),
                }
            }
        }
    }
}

/// Checks one key's operations against a register that starts absent.
pub fn check_key<'a>(ops: &[&'a Operation], budget: u64) -> Verdict {
    let mut values: HashMap<&'a str, u32> = HashMap::new();
    let mut index = |v: &'a str| {
        let next = values.len() as u32;
        *values.entry(v).or_insert(next)
    };
    let mut steps = Vec::with_capacity(ops.len());
    for &op in ops {
        let step = match (&op.request, &op.response) {
            (Request::Get { .. }, Response::Get { value, .. }) => Step::Read(value.as_deref().map(&mut index)),
            (Request::Get { .. }, _) => return Verdict::Violation(format!("a read without a read response: {op:?}")),
            (Request::Put { value, .. }, _) => Step::Write(index(value)),
            (Request::Delete { .. }, Response::Delete { deleted, .. }) => Step::Delete {
                deleted: Some(*deleted),
            },
            (Request::Delete { .. }, _) => Step::Delete { deleted: None },
            (Request::Cas { expect, value, .. }, response) => Step::Cas {
                expect: expect.as_deref().map(&mut index),
                value: index(value),
                succeeded: match response {
                    Response::Cas { succeeded, .. } => Some(*succeeded),
                    _ => None,
                },
            },
        };
        steps.push(step);
    }
    search(ops, &steps, budget)
}

/// The events of a history as a doubly linked list, so that placed operations can be
/// lifted out and put back in O(1). Node 0 is the head, the last node the tail.
struct Events {
    next: Vec<usize>,
    prev: Vec<usize>,
    /// For each event node: the operation, and whether it is the call (else the return).
    op: Vec<usize>,
    is_call: Vec<bool>,
    /// For a call node: its return node.
    ret_of: Vec<usize>,
}

impl Events {
    fn new(ops: &[&Operation]) -> Events {
        // (time, calls before returns at equal times: overlapping is the lenient reading)
        let mut order: Vec<(u64, u8, usize)> = Vec::with_capacity(ops.len() * 2);
        for (i, op) in ops.iter().enumerate() {
            order.push((op.call, 0, i));
            order.push((op.ret, 1, i));
        }
        order.sort();
        let n = order.len() + 2;
        let mut ev = Events {
            next: (1..=n).collect(),
            prev: (0..n).map(|i| i.saturating_sub(1)).collect(),
            op: vec![usize::MAX; n],
            is_call: vec![false; n],
            ret_of: vec![0; n],
        };
        let mut call_node = vec![0; ops.len()];
        for (pos, &(_, kind, i)) in order.iter().enumerate() {
            let node = pos + 1;
            ev.op[node] = i;
            ev.is_call[node] = kind == 0;
            if kind == 0 {
                call_node[i] = node;
            } else {
                ev.ret_of[call_node[i]] = node;
            }
        }
        ev
    }

    fn tail(&self) -> usize {
        self.next.len() - 1
    }

    fn unlink(&mut self, node: usize) {
        let (p, n) = (self.prev[node], self.next[node]);
        self.next[p] = n;
        self.prev[n] = p;
    }

    fn relink(&mut self, node: usize) {
        let (p, n) = (self.prev[node], self.next[node]);
        self.next[p] = node;
        self.prev[n] = node;
    }

    /// Takes a call and its return out of the list.
    fn lift(&mut self, call: usize) {
        self.unlink(call);
        self.unlink(self.ret_of[call]);
    }

    /// Undoes [`Events::lift`] (in reverse order, so the neighbours are right again).
    fn unlift(&mut self, call: usize) {
        self.relink(self.ret_of[call]);
        self.relink(call);
    }
}

fn search(ops: &[&Operation], steps: &[Step], budget: u64) -> Verdict {
    let mut events = Events::new(ops);
    let words = ops.len().div_ceil(64);
    let mut placed = vec![0u64; words];
    let mut state: State = None;
    let mut seen: HashSet<(Vec<u64>, State)> = HashSet::new();
    let mut stack: Vec<(usize, State)> = Vec::new();
    // The deepest point reached, for the report.
    let mut deepest = (0usize, usize::MAX);
    let mut entry = events.next[0];
    let mut spent = 0u64;
    loop {
        spent += 1;
        if spent > budget {
            return Verdict::Undecided;
        }
        if entry == events.tail() {
            return Verdict::Linearizable;
        }
        let i = events.op[entry];
        if events.is_call[entry] {
            if let Some(after) = steps[i].apply(state) {
                placed[i / 64] |= 1 << (i % 64);
                if seen.insert((placed.clone(), after)) {
                    stack.push((entry, state));
                    state = after;
                    events.lift(entry);
                    entry = events.next[0];
                    continue;
                }
                placed[i / 64] &= !(1 << (i % 64));
            }
            entry = events.next[entry];
        } else {
            // The return of an operation that was not placed: undo the last placement.
            if stack.len() >= deepest.0 {
                deepest = (stack.len(), i);
            }
            let Some((call, before)) = stack.pop() else {
                let stuck = ops[deepest.1];
                return Verdict::Violation(format!(
                    "after {} operations in order, none explains client {}'s {:?} → {:?}",
                    deepest.0, stuck.client, stuck.request, stuck.response
                ));
            };
            let j = events.op[call];
            placed[j / 64] &= !(1 << (j % 64));
            state = before;
            events.unlift(call);
            entry = events.next[call];
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::history::NEVER;

    fn op(client: usize, request: Request, response: Response, call: u64, ret: u64) -> Operation {
        Operation {
            client,
            member: None,
            request,
            response,
            call,
            ret,
        }
    }

    fn put(v: &str) -> Request {
        Request::Put {
            key: "k".into(),
            value: v.into(),
        }
    }

    fn get() -> Request {
        Request::Get {
            key: "k".into(),
            serializable: false,
        }
    }

    fn seen(v: Option<&str>) -> Response {
        Response::Get {
            value: v.map(Into::into),
            revision: 0,
        }
    }

    const PUT: Response = Response::Put { revision: 0 };

    fn verdict(history: &[Operation]) -> Verdict {
        let ops: Vec<&Operation> = history.iter().collect();
        check_key(&ops, 1_000_000)
    }

    #[test]
    fn sequential_history_is_linearizable() {
        let h = [
            op(0, get(), seen(None), 0, 1),
            op(0, put("a"), PUT, 2, 3),
            op(1, get(), seen(Some("a")), 4, 5),
        ];
        assert_eq!(verdict(&h), Verdict::Linearizable);
    }

    #[test]
    fn stale_read_after_a_completed_write_is_a_violation() {
        let h = [
            op(0, put("a"), PUT, 0, 1),
            op(0, put("b"), PUT, 2, 3),
            op(1, get(), seen(Some("a")), 4, 5),
        ];
        assert!(matches!(verdict(&h), Verdict::Violation(_)));
    }

    #[test]
    fn concurrent_reads_may_see_either_side_of_a_write() {
        let h = [
            op(0, put("a"), PUT, 0, 1),
            op(0, put("b"), PUT, 2, 10),
            op(1, get(), seen(Some("b")), 3, 4),
            op(2, get(), seen(Some("a")), 3, 5),
        ];
        // b is visible at 4 to client 1, so client 2's read (which returned at 5, overlapping)
        // can still be placed before the write: linearizable.
        assert_eq!(verdict(&h), Verdict::Linearizable);
        let h = [
            op(0, put("a"), PUT, 0, 1),
            op(0, put("b"), PUT, 2, 10),
            op(1, get(), seen(Some("b")), 3, 4),
            op(2, get(), seen(Some("a")), 5, 6),
        ];
        // Client 2 started after client 1 saw b: seeing a now would be going back in time.
        assert!(matches!(verdict(&h), Verdict::Violation(_)));
    }

    #[test]
    fn an_unknown_write_may_have_happened_or_not() {
        let applied = [
            op(0, put("a"), Response::Unknown, 0, NEVER),
            op(1, get(), seen(Some("a")), 5, 6),
        ];
        assert_eq!(verdict(&applied), Verdict::Linearizable);
        let not_applied = [
            op(0, put("a"), Response::Unknown, 0, NEVER),
            op(1, get(), seen(None), 5, 6),
        ];
        assert_eq!(verdict(&not_applied), Verdict::Linearizable);
        // ...but not both ways: once seen, it cannot be undone.
        let flicker = [
            op(0, put("a"), Response::Unknown, 0, NEVER),
            op(1, get(), seen(Some("a")), 5, 6),
            op(1, get(), seen(None), 7, 8),
        ];
        assert!(matches!(verdict(&flicker), Verdict::Violation(_)));
    }

    #[test]
    fn compare_and_swap_outcomes_follow_the_register() {
        let cas = |expect: Option<&str>, v: &str| Request::Cas {
            key: "k".into(),
            expect: expect.map(Into::into),
            value: v.into(),
        };
        let ok = |s: bool| Response::Cas {
            succeeded: s,
            revision: 0,
        };
        let h = [
            op(0, cas(None, "a"), ok(true), 0, 1),
            op(1, cas(None, "b"), ok(false), 2, 3),
            op(1, cas(Some("a"), "c"), ok(true), 4, 5),
            op(0, get(), seen(Some("c")), 6, 7),
        ];
        assert_eq!(verdict(&h), Verdict::Linearizable);
        // Two sequential CAS from the same expected value cannot both succeed.
        let h = [
            op(0, put("a"), PUT, 0, 1),
            op(1, cas(Some("a"), "b"), ok(true), 2, 3),
            op(2, cas(Some("a"), "c"), ok(true), 4, 5),
        ];
        assert!(matches!(verdict(&h), Verdict::Violation(_)));
    }

    #[test]
    fn delete_reports_whether_the_key_existed() {
        let del = Request::Delete { key: "k".into() };
        let h = [
            op(0, put("a"), PUT, 0, 1),
            op(
                0,
                del.clone(),
                Response::Delete {
                    deleted: true,
                    revision: 0,
                },
                2,
                3,
            ),
            op(
                1,
                del,
                Response::Delete {
                    deleted: true,
                    revision: 0,
                },
                4,
                5,
            ),
        ];
        assert!(matches!(verdict(&h), Verdict::Violation(_)));
    }

    #[test]
    fn serializable_reads_are_left_out_and_keys_are_checked_apart() {
        let stale = Request::Get {
            key: "k".into(),
            serializable: true,
        };
        let other = Request::Put {
            key: "other".into(),
            value: "x".into(),
        };
        let h = [
            op(0, put("a"), PUT, 0, 1),
            op(0, put("b"), PUT, 2, 3),
            op(1, stale, seen(Some("a")), 4, 5),
            op(2, other, PUT, 0, 9),
        ];
        let s = check(&h, 1_000);
        assert_eq!((s.keys, s.operations), (2, 3));
        assert!(s.failures.is_empty(), "{:?}", s.failures);
    }

    #[test]
    fn a_search_over_budget_is_undecided_not_passed() {
        // Many concurrent writes and a read that only one order explains.
        let mut h: Vec<Operation> = (0..12).map(|i| op(i, put(&format!("v{i}")), PUT, 0, 100)).collect();
        h.push(op(99, get(), seen(Some("v3")), 101, 102));
        let ops: Vec<&Operation> = h.iter().collect();
        assert_eq!(check_key(&ops, 10), Verdict::Undecided);
        assert_eq!(check_key(&ops, 10_000_000), Verdict::Linearizable);
    }
}
