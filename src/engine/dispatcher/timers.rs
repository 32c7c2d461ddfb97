//! Time decisions: what the dispatcher does when a deadline comes due. The deadlines live in
//! the state (set by `apply` from events, so they survive a restart); this file only decides
//! what each one means: an offer expires and its trip cascades, a searching trip searches
//! again, the pending batch is matched.

use super::Dispatcher;
use crate::domain::OfferId;
use crate::engine::state::Due;
use crate::events::EventKind;

impl Dispatcher {
    /// Fires every deadline at or before `now_ms`: offer expiries (which cascade), search
    /// retries, batch flushes (batch policy), and forgetting ended trips past their retention.
    pub fn fire_due(&mut self, now_ms: u64) {
        while let Some(due) = self.state.pop_due(now_ms) {
            match due {
                Due::OfferDeadline(offer) => self.expire(now_ms, offer),
                Due::Retry(trip) => self.decide(now_ms, |c| c.continue_search(trip)),
                Due::BatchFlush => self.flush_batch(now_ms),
            }
        }
        self.state.sweep_surge(now_ms);
    }

    fn expire(&mut self, now_ms: u64, offer: OfferId) {
        let expired = self.decide(now_ms, |c| {
            let pending = c.s.offer(offer)?;
            let (trip, driver) = (pending.details.trip, pending.driver);
            c.emit(EventKind::OfferExpired(super::offer_ref(&pending.details)));
            Some((trip, driver))
        });
        self.search_again(now_ms, expired.map(|e| e.0));
        self.serve_waiting(now_ms, expired.map(|e| e.1));
    }
}
