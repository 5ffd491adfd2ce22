//! Fill notifications for callers that wait on another process's lease (`lock`).
//!
//! The fill script publishes `filled` on the entry's channel (and the release script an empty
//! message). A notice is only a wake-up: the waiter reads the entry from Redis, so a message
//! published by anyone else (PUBLISH rights are not write rights) can never inject a value. A process subscribes to a channel while one of its calls waits on it:
//! with in-process coalescing that is one subscription per key and process, whatever the
//! number of callers. Messages reach [`Notices`], which hands them to the waiting call.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, PoisonError};
use tokio::sync::watch;

/// What happened to a lease that a call waits on.
#[derive(Debug, Clone)]
pub(crate) enum Notice {
    /// The holder stored the entry.
    Filled,
    /// The holder gave the lease up without storing (an error, or nothing to store).
    Released,
}

/// The channel on which fills and releases of `entry_key` are announced.
pub(crate) fn channel(entry_key: &str) -> String {
    let mut channel = String::with_capacity(entry_key.len() + 5);
    channel.push_str(entry_key);
    channel.push_str(":fill");
    channel
}

type Listeners = HashMap<String, (usize, watch::Sender<Option<Notice>>)>;

/// What to do with a channel whose subscription the server dropped while this process still
/// listens on it.
type Resubscribe = Arc<dyn Fn(String) + Send + Sync>;

/// The channels this process listens on, and where their messages go.
#[derive(Default, Clone)]
pub(crate) struct Notices {
    listeners: Arc<Mutex<Listeners>>,
    resubscribe: Arc<OnceLock<Resubscribe>>,
}

impl std::fmt::Debug for Notices {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Notices")
            .field("listened", &self.listeners().len())
            .finish_non_exhaustive()
    }
}

impl Notices {
    fn listeners(&self) -> MutexGuard<'_, Listeners> {
        self.listeners
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// Starts listening on `channel`; true if nobody in this process listened before (the
    /// caller then subscribes on the server).
    pub(crate) fn listen(&self, channel: &str) -> (watch::Receiver<Option<Notice>>, bool) {
        let mut listeners = self.listeners();
        let (count, sender) = listeners
            .entry(channel.to_owned())
            .or_insert_with(|| (0, watch::Sender::new(None)));
        *count += 1;
        (sender.subscribe(), *count == 1)
    }

    /// Whether anyone in this process listens on `channel`.
    pub(crate) fn is_listened(&self, channel: &str) -> bool {
        self.listeners().contains_key(channel)
    }

    /// Stops one listener of `channel`; true if it was the last (the caller then unsubscribes).
    pub(crate) fn stop(&self, channel: &str) -> bool {
        let mut listeners = self.listeners();
        let Some((count, _)) = listeners.get_mut(channel) else {
            return false;
        };
        *count -= 1;
        if *count == 0 {
            listeners.remove(channel);
            return true;
        }
        false
    }

    /// Hands a notice to the listeners of `channel`, if any.
    pub(crate) fn deliver(&self, channel: &str, notice: Notice) {
        if let Some((_, sender)) = self.listeners().get(channel) {
            sender.send_replace(Some(notice));
        }
    }

    /// The channels someone in this process listens on.
    pub(crate) fn listened_channels(&self) -> Vec<String> {
        self.listeners().keys().cloned().collect()
    }

    /// Lets every waiter look at its entry again (announcements may have been lost).
    pub(crate) fn wake_all(&self) {
        for (_, sender) in self.listeners().values() {
            sender.send_replace(Some(Notice::Released));
        }
    }

    /// Sets what happens when the server drops a subscription someone here still listens on
    /// (a cluster node that lost the channel's slot, after a failover or a slot move, tells
    /// its shard subscribers so): `resubscribe` subscribes again, on the slot's new owner,
    /// then wakes the waiters.
    pub(crate) fn on_lost_subscription(
        &self,
        resubscribe: impl Fn(String) + Send + Sync + 'static,
    ) {
        let _ = self.resubscribe.set(Arc::new(resubscribe));
    }

    /// Hands a pub/sub message pushed by Redis (RESP3) to its listeners.
    pub(crate) fn deliver_push(&self, push: redis::PushInfo) {
        if push.kind == redis::PushKind::SUnsubscribe {
            // Ours when nobody listens any more; otherwise the server's doing.
            let channel = push
                .data
                .first()
                .and_then(|channel| redis::from_redis_value_ref::<String>(channel).ok());
            if let (Some(channel), Some(resubscribe)) = (channel, self.resubscribe.get())
                && self.is_listened(&channel)
            {
                resubscribe(channel);
            }
            return;
        }
        if push.kind == redis::PushKind::Disconnection {
            // Messages published while the connection is down are lost: let every waiter look
            // again (after the reconnection re-subscribes, before any other command).
            for (_, sender) in self.listeners().values() {
                sender.send_replace(Some(Notice::Released));
            }
            return;
        }
        // A shard message (`SPUBLISH`, on a cluster) says the same as a plain one.
        if !matches!(
            push.kind,
            redis::PushKind::Message | redis::PushKind::SMessage
        ) {
            return;
        }
        let [channel, payload] = push.data.as_slice() else {
            return;
        };
        let (Ok(channel), Ok(payload)) = (
            redis::from_redis_value_ref::<String>(channel),
            redis::from_redis_value_ref::<Vec<u8>>(payload),
        ) else {
            return;
        };
        let notice = if payload.is_empty() {
            Notice::Released
        } else {
            Notice::Filled
        };
        self.deliver(&channel, notice);
    }
}

/// A call's wait on a channel; stops listening when dropped.
pub(crate) struct Listener {
    notices: Notices,
    channel: String,
    receiver: watch::Receiver<Option<Notice>>,
    /// Called with the channel when the last listener of this process stops.
    on_last: Option<Box<dyn FnOnce(String) + Send>>,
}

impl Listener {
    pub(crate) fn new(
        notices: Notices,
        channel: String,
        receiver: watch::Receiver<Option<Notice>>,
        on_last: Option<Box<dyn FnOnce(String) + Send>>,
    ) -> Self {
        Listener {
            notices,
            channel,
            receiver,
            on_last,
        }
    }

    /// The next notice, or `None` at `deadline`.
    pub(crate) async fn next(&mut self, deadline: tokio::time::Instant) -> Option<Notice> {
        let changed = tokio::time::timeout_at(deadline, self.receiver.changed()).await;
        match changed {
            Ok(Ok(())) => self.receiver.borrow_and_update().clone(),
            _ => None,
        }
    }
}

impl Drop for Listener {
    fn drop(&mut self) {
        if self.notices.stop(&self.channel)
            && let Some(on_last) = self.on_last.take()
        {
            on_last(std::mem::take(&mut self.channel));
        }
    }
}
