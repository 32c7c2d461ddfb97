//! [`Latest`]: a hand-over of one value between two threads where the newest wins.
//!
//! The dispatcher side hands the snapshot thread state images and the map-view thread view
//! parts; neither may ever wait for the slower thread, and a value still waiting when a newer
//! one comes is worth nothing (the newer one holds more). So: a channel of one, and a value
//! offered while it is full replaces the waiting one.

use crossbeam_channel::{Receiver, Sender, TrySendError};

/// The offering side (see the module docs). One thread offers; the other receives from the
/// [`Receiver`] [`Latest::new`] returns.
#[derive(Debug)]
pub(crate) struct Latest<T> {
    tx: Sender<T>,
    /// The same channel's receiving end, so a newer value can take the waiting one out.
    waiting: Receiver<T>,
}

impl<T> Latest<T> {
    pub(crate) fn new() -> (Latest<T>, Receiver<T>) {
        let (tx, rx) = crossbeam_channel::bounded(1);
        let waiting = rx.clone();
        (Latest { tx, waiting }, rx)
    }

    /// Hands `value` over without waiting; a value still waiting is dropped for it (true when
    /// one was, in `.1`). As this is the only sender, once the waiting value is taken out the
    /// slot is free (the receiver only ever empties it). `.0` is false if the receiver is gone.
    pub(crate) fn offer(&self, value: T) -> (bool, bool) {
        match self.tx.try_send(value) {
            Ok(()) => (true, false),
            Err(TrySendError::Full(value)) => {
                let replaced = self.waiting.try_recv().is_ok();
                (self.tx.try_send(value).is_ok(), replaced)
            }
            Err(TrySendError::Disconnected(_)) => (false, false),
        }
    }
}
