//! The root context's to-do list: the [`RootAction`]s it carries out, in order, with at most
//! [`ANSWERS_PER_CALLBACK`] local replies per host callback.
//!
//! Why the cap: Envoy does not send a local reply inside the hostcall; it queues it on the VM and
//! runs that queue when the VM callback returns, and again when every nested VM callback returns
//! (each local reply goes through the filter's own `on_response_headers`). N replies sent from one
//! root callback therefore nest N deep on Envoy's stack, and a few hundred exhaust it (the VM dies
//! with "Maximum call stack size exceeded"). So one callback sends a few, and the rest wait here in
//! arrival order; the root context rings its own doorbell queue, and Envoy calls it back later on a
//! fresh stack to carry out the next few. The depth is bounded by the cap, whatever the number of
//! waiting duplicates an outsider sends.
//!
//! Actions that a failed send produces go to the front, so the order is the one a recursive
//! carrying-out would have, with no recursion.

use crate::background::worker::RootAction;
use std::collections::VecDeque;

/// Local replies one root-context callback may send (16 nest far below the few hundred that
/// overflow Envoy's stack).
pub const ANSWERS_PER_CALLBACK: usize = 16;

/// The actions still to carry out, and how many local replies this callback has sent.
#[derive(Debug, Default)]
pub struct Agenda {
    todo: VecDeque<RootAction>,
    answered: usize,
}

impl Agenda {
    /// A new host callback starts: its local replies are counted from zero.
    pub fn begin(&mut self) {
        self.answered = 0;
    }

    /// Actions to carry out after those already queued.
    pub fn extend(&mut self, actions: Vec<RootAction>) {
        self.todo.extend(actions);
    }

    /// Actions to carry out before anything else (what a failed send produced), in their order.
    pub fn push_front(&mut self, actions: Vec<RootAction>) {
        for action in actions.into_iter().rev() {
            self.todo.push_front(action);
        }
    }

    /// The next action to carry out in this callback, or `None` when nothing is left or the next
    /// one is a local reply past the cap (it waits for the next callback).
    pub fn take_next(&mut self) -> Option<RootAction> {
        // An answer handed to a stream may send its local reply too.
        if matches!(
            self.todo.front(),
            Some(RootAction::Answer(_) | RootAction::Deliver(_))
        ) {
            if self.answered >= ANSWERS_PER_CALLBACK {
                return None;
            }
            self.answered += 1;
        }
        self.todo.pop_front()
    }

    /// Whether actions wait for a later callback (the root context then rings its doorbell).
    pub fn has_more(&self) -> bool {
        !self.todo.is_empty()
    }

    pub fn len(&self) -> usize {
        self.todo.len()
    }

    pub fn is_empty(&self) -> bool {
        self.todo.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::background::worker::Answer;
    use crate::metrics::Metric;

    fn answer(stream_id: u32) -> RootAction {
        RootAction::Answer(Answer {
            stream_id,
            status: 201,
            headers: Vec::new(),
            body: Vec::new(),
            trailers: Vec::new(),
            route: None,
        })
    }

    fn answered(action: &RootAction) -> Option<u32> {
        match action {
            RootAction::Answer(a) => Some(a.stream_id),
            _ => None,
        }
    }

    /// Carries out one callback: the stream ids answered, in order, and the counts seen.
    fn callback(agenda: &mut Agenda) -> (Vec<u32>, usize) {
        agenda.begin();
        let (mut ids, mut counts) = (Vec::new(), 0);
        while let Some(action) = agenda.take_next() {
            match answered(&action) {
                Some(id) => ids.push(id),
                None => counts += 1,
            }
        }
        (ids, counts)
    }

    #[test]
    fn ten_thousand_answers_go_out_a_few_per_callback_in_order() {
        let mut agenda = Agenda::default();
        agenda.extend((0..10_000).map(answer).collect());
        let mut all = Vec::new();
        let mut callbacks = 0;
        while agenda.has_more() {
            let (ids, _) = callback(&mut agenda);
            assert!(
                ids.len() <= ANSWERS_PER_CALLBACK,
                "{} in one callback",
                ids.len()
            );
            all.extend(ids);
            callbacks += 1;
        }
        assert_eq!(
            all,
            (0..10_000).collect::<Vec<u32>>(),
            "every one, first come first served"
        );
        assert_eq!(callbacks, 10_000 / ANSWERS_PER_CALLBACK);
    }

    #[test]
    fn other_actions_are_not_capped_but_keep_their_place() {
        let mut agenda = Agenda::default();
        let mut actions: Vec<RootAction> = (0..20)
            .map(|_| RootAction::Count(Metric::Replayed))
            .collect();
        actions.extend((0..20).map(answer));
        actions.push(RootAction::Count(Metric::Executed));
        agenda.extend(actions);
        let (ids, counts) = callback(&mut agenda);
        assert_eq!(counts, 20, "the counts before the answers all run");
        assert_eq!(ids, (0..16).collect::<Vec<u32>>());
        assert_eq!(agenda.len(), 5, "4 answers and the count behind them wait");
        let (ids, counts) = callback(&mut agenda);
        assert_eq!((ids, counts), ((16..20).collect(), 1));
        assert!(!agenda.has_more());
    }

    #[test]
    fn what_a_failed_send_produces_comes_next() {
        let mut agenda = Agenda::default();
        agenda.extend(vec![answer(1), answer(2)]);
        agenda.begin();
        assert_eq!(agenda.take_next().as_ref().and_then(answered), Some(1));
        agenda.push_front(vec![answer(10), answer(11)]);
        let rest: Vec<Option<u32>> = std::iter::from_fn(|| agenda.take_next())
            .map(|a| answered(&a))
            .collect();
        assert_eq!(rest, [Some(10), Some(11), Some(2)]);
    }

    #[test]
    fn the_cap_is_per_callback() {
        let mut agenda = Agenda::default();
        agenda.extend((0..16).map(answer).collect());
        assert_eq!(callback(&mut agenda).0.len(), 16);
        agenda.extend(vec![answer(99)]);
        assert!(
            agenda.take_next().is_none(),
            "the 17th waits in the same callback"
        );
        assert_eq!(
            callback(&mut agenda).0,
            [99],
            "and goes out in the next one"
        );
    }
}
